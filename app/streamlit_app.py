"""Kaleido demo: the entry page and the navigation between the four pages.

    KALEIDO_DEMO_RUN=runs/demo-app streamlit run app/streamlit_app.py

The folder named by ``KALEIDO_DEMO_RUN`` is a prepared demo (``kaleido demo prepare``); the
app only reads it and calls the library (``kaleido.demo``).
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `app` and `kaleido` importable however it is started

st.set_page_config(page_title="Kaleido fashion demo", page_icon=":material/checkroom:", layout="wide")

HERE = Path(__file__).resolve().parent
pages = [
    st.Page(str(HERE / "views" / "search.py"), title="Search", icon=":material/search:", default=True),
    st.Page(str(HERE / "views" / "shop_the_look.py"), title="Shop the look", icon=":material/photo_camera:"),
    st.Page(str(HERE / "views" / "inspector.py"), title="Product inspector", icon=":material/biotech:"),
    st.Page(str(HERE / "views" / "tagging.py"), title="Catalog tagging", icon=":material/sell:"),
]
st.navigation(pages).run()
