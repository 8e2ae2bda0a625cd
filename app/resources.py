"""What every page shares: the demo session (models, index, tags), loaded once per server."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

REPO = Path(__file__).resolve().parents[1]


def run_dir() -> str:
    """The prepared demo folder (``KALEIDO_DEMO_RUN``, default ``runs/demo-app``)."""
    return os.environ.get("KALEIDO_DEMO_RUN", str(REPO / "runs" / "demo-app"))


@st.cache_resource(show_spinner="Loading the models and the search index ...")
def _session(path: str):
    from kaleido.demo.session import DemoSession

    return DemoSession(path)


def session():
    """The :class:`~kaleido.demo.session.DemoSession`, or a message and a stop when the folder is not prepared."""
    path = run_dir()
    try:
        return _session(path)
    except FileNotFoundError as err:
        st.error(f"The demo folder is not ready: {err}\n\nRun `make demo` (or `kaleido demo prepare --out {path}`).")
        st.stop()


def tag_folders() -> dict[str, str]:
    """Catalog folders the server may tag (``KALEIDO_TAG_FOLDERS``, ``:``-separated; default the bundled sample)."""
    raw = os.environ.get("KALEIDO_TAG_FOLDERS", str(REPO / "data" / "sample"))
    return {Path(p).name or p: p for p in raw.split(os.pathsep) if p}
