"""What the Streamlit demo calls: prepare a catalog (``prepare_demo``), open it (``DemoSession``),
check uploads (``uploads``), show the pipeline for one product (``inspect.Inspector``)."""

from kaleido.demo.session import DemoSession, DemoState, prepare_demo, resolve_model

__all__ = ["DemoSession", "DemoState", "prepare_demo", "resolve_model"]
