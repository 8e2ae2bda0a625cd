"""``kaleido demo prepare``: tag, extract and index a catalog for the Streamlit app."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="the Streamlit demo: prepare a catalog for it")
    inner = p.add_subparsers(dest="demo", required=True)
    pr = inner.add_parser("prepare", help="tags, patch features and the search index of a catalog (resumable)")
    pr.add_argument("--catalog", default="data/sample", help="catalog folder or table (default: the bundled sample)")
    pr.add_argument("--model", default="kaleido-fashion-v4", help="a released model name (models/) or folder")
    pr.add_argument("--out", type=Path, default=Path("runs/demo-app"), help="the demo folder the app reads")
    pr.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    import time

    from ..demo.session import prepare_demo

    start = time.perf_counter()
    prepare_demo(args.catalog, args.model, args.out, progress=lambda m: print(f"[{time.perf_counter() - start:6.1f} s] {m}",
                                                                              flush=True))
    print(f"serve it: KALEIDO_DEMO_RUN={args.out} streamlit run app/streamlit_app.py")
    return 0
