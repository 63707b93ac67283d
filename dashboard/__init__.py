"""hetcache-dashboard: a local Streamlit app over profiles, tuning studies, policies and run folders.

Start it with `hetcache-dashboard [--runs DIR] [--storage URL] [--port N]` (cli.py); the pages live in views/ and
read what the profiler, the tuner and the runner wrote, through readers.py, studies.py and profiles.py.
"""
