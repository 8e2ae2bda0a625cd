"""Where released models live: ``models/<name>/`` at the repository root (see its README files)."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def release_candidates(name_or_path: str | Path) -> list[Path]:
    """The folders a model argument may mean: the path itself, then ``models/<name>``."""
    return [Path(name_or_path), MODELS_DIR / str(name_or_path)]
