"""mixsep dashboard: the pages, each with its own title and icon in the sidebar.

    streamlit run dashboard.py -- --data-root DIR --runs-dir DIR
    (or MIXSEP_DATA_ROOT / MIXSEP_RUNS_DIR; defaults ./data and ./runs)
"""
import streamlit as st

import mixsep_ui as ui

st.navigation([st.Page(path, title=title, icon=icon, default=i == 0)
               for i, (path, title, icon) in enumerate(ui.PAGES)]).run()
