"""The Streamlit shopping demo: ``streamlit run app/streamlit_app.py`` (``make demo`` prepares and serves it)."""
