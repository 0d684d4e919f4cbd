"""mixsep dashboard: the pages, each with its own title and icon in the sidebar.

    streamlit run dashboard.py -- --data-root DIR --runs-dir DIR
    (or MIXSEP_DATA_ROOT / MIXSEP_RUNS_DIR; defaults ./data and ./runs)
"""
import streamlit as st

import mixsep_ui as ui

# The sidebar's links are drawn by ui.setup with Material icons from Streamlit's own font: a page
# icon given here would also become the tab's favicon, which the browser fetches from fonts.gstatic.com.
st.navigation([st.Page(path, title=title, default=i == 0) for i, (path, title, _) in enumerate(ui.PAGES)],
              position="hidden").run()
