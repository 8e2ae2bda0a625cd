"""What several ``kaleido`` commands share: catalog options and reading image files."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image

from ..config import load_config, save_config
from ..data import CatalogConfig, ImageLoadError, decode_image, load_catalog


def add_catalog_args(parser, *, positional: bool = False, required: bool = True) -> None:
    """``CATALOG`` (or ``--catalog``), ``--columns``, ``--image-root`` and ``--encoding``."""
    help_ = "table (csv/parquet/jsonl), Fashion-Gen .h5, or a folder holding one"
    if positional:
        parser.add_argument("catalog", help=help_)
    else:
        parser.add_argument("--catalog", required=required, help=help_)
    parser.add_argument("--columns", default="auto",
                        help="column preset (fashion-products, kaleido) or auto (default)")
    parser.add_argument("--image-root", default=None, help="folder of relative image paths")
    parser.add_argument("--encoding", default="auto",
                        help="text encoding of a CSV / JSONL table (cp1252, latin-1, ...); auto "
                             "(default): UTF-8, lines that are not decoded as cp1252 and counted")


def catalog_overrides(args, prefix: str = "") -> list[str]:
    """The catalog options as config overrides (``prefix`` e.g. ``"catalog."``)."""
    items = [f"{prefix}path={args.catalog}", f"{prefix}columns={args.columns}"]
    if args.image_root:
        items.append(f"{prefix}image_root={args.image_root}")
    if getattr(args, "encoding", "auto") != "auto":
        items.append(f"{prefix}encoding={args.encoding}")
    return items


def catalog_config(args) -> CatalogConfig:
    return load_config(CatalogConfig, overrides=catalog_overrides(args))


def load_run_catalog(args, out: Path):
    """The catalog of the command line's catalog options, its load summary printed and its
    config written to ``OUT/catalog.yaml`` beside the run's outputs."""
    cfg = catalog_config(args)
    catalog = load_catalog(cfg)
    print(catalog.report.summary())
    save_config(cfg, out, "catalog.yaml")
    return catalog


def readable_images(paths: list[Path], failures: list,
                    min_side: int | None = None) -> Iterator[tuple[Path, Image.Image]]:
    """Decode each file (big ones smaller, see ``decode_image(min_side=)``); report and skip
    unreadable ones (appended to ``failures``)."""
    for path in paths:
        try:
            yield path, decode_image(path, min_side=min_side)
        except ImageLoadError as err:
            print(f"skipped {err}")
            failures.append(path)


def exit_code(failures: list, paths: list) -> int:
    """1 when no file at all could be read, else 0."""
    return 1 if paths and len(failures) == len(paths) else 0


@contextmanager
def weights_help(fallbacks: str):
    """Add what to run instead to a "U2-Net-p weights unavailable" error."""
    from saliency.weights import WeightsUnavailableError

    try:
        yield
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(f"{err}\nOr run without these weights: {fallbacks}.") from err
