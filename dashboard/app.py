"""The Streamlit entry script (`streamlit run app.py`): page navigation only; each page is a script in views/.

(Not `pages/`: a folder of that name next to the entry script switches Streamlit to its old multipage mode.)
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent  # absolute: `streamlit run dashboard/app.py` gives a relative __file__
PAGES = (
    ("overview.py", "Overview", "", ":material/home:"),  # the default page, served at /
    ("profile.py", "Profile", "profile", ":material/insights:"),
    ("study.py", "Study", "study", ":material/tune:"),
    ("policy.py", "Policy", "policy", ":material/description:"),
    ("compare.py", "Compare", "compare", ":material/compare:"),
)

st.set_page_config(page_title="hetcache dashboard", layout="wide")
navigation = st.navigation(
    [
        st.Page(HERE / "views" / file, title=title, url_path=path or None, icon=icon, default=not path)
        for file, title, path, icon in PAGES
    ]
)
navigation.run()
