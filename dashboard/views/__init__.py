"""Page scripts of the dashboard, run by Streamlit through `st.navigation` in app.py."""
