"""Alignments on disk: one JSON line per product, appended as products are done.

A killed job leaves at worst one torn last line; reopening drops it, and ids already
written are skipped, so ``kaleido align build`` resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from .generator import AlignedPair

log = logging.getLogger(__name__)
ALIGNMENTS_FILE = "alignments.jsonl"


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path / ALIGNMENTS_FILE if path.is_dir() else path


def read_records(path: str | Path) -> dict[str, dict]:
    """``{product_id: {"id", "caption", "pairs": [...]}}``; a torn last line is ignored."""
    path = _resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no alignments; build them with `kaleido align build`")
    records = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: line %d is incomplete (killed run?); ignored", path, n)
                continue
            records[record["id"]] = record
    return records


def load_alignments(path: str | Path) -> dict[str, list[AlignedPair]]:
    """``{product_id: [AlignedPair, ...]}`` as the masking step consumes them."""
    return {pid: [AlignedPair(p["word"], tuple(p["tokens"]), p["level"], p["patch"], p["score"])
                  for p in rec["pairs"]] for pid, rec in read_records(path).items()}


class AlignmentWriter:
    """Append records; on open, cut a torn last line so the file stays valid JSONL."""

    def __init__(self, path: str | Path):
        self.path = _resolve(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = set(read_records(self.path)) if self.path.is_file() else set()
        if self.path.is_file():
            self._truncate_torn_tail()
        self._f = open(self.path, "a", encoding="utf-8")

    def _truncate_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def write(self, product_id: str, caption: str, pairs: list[AlignedPair]) -> None:
        record = {"id": product_id, "caption": caption, "pairs": [asdict(p) for p in pairs]}
        self._f.write(json.dumps(record) + "\n")
        self.done.add(product_id)

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        self._f.close()

    def __enter__(self) -> "AlignmentWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
