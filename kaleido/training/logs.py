"""What a run leaves to read: ``log.csv``, TensorBoard scalars and ``loss_curves.png``."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

#: Columns written first, in this order; the loss / metric columns follow as they appear.
FIXED_COLUMNS = ("step", "epoch", "lr", "samples_per_s", "wall_s")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


class CSVLog:
    """``log.csv`` of a run: one row per logged step; rows after a resumed step are dropped.

    A row is appended as one line while its columns are known; a new column (a ``val_``
    metric appearing, say) rewrites the file with the widened header.

    Args:
        path: the CSV file.
        keep_until: keep the existing rows with ``step <= keep_until`` (0 = start afresh).
    """

    def __init__(self, path: str | Path, keep_until: int = 0) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, str]] = []
        self.columns: list[str] = list(FIXED_COLUMNS)
        if keep_until > 0 and self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns += [c for c in reader.fieldnames or () if c not in self.columns]
                self.rows = [r for r in reader if int(r["step"]) <= keep_until]
        self._rewrite()

    def append(self, row: Mapping[str, object]) -> None:
        """Add one row (missing columns stay empty)."""
        row = {k: ("" if v is None else str(v)) for k, v in row.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        with partial.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        partial.replace(self.path)


class TensorBoardLog:
    """Scalars under ``folder`` when TensorBoard is installed (a no-op otherwise).

    Args:
        folder: the event folder.
        purge_step: on resume, events from this step on (left by the interrupted run)
            are hidden; ``None`` on a fresh run.
        enabled: ``False`` makes every call a no-op.
    """

    def __init__(self, folder: str | Path, purge_step: int | None = None,
                 enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _warn_once("tensorboard", "tensorboard is not installed: no TensorBoard scalars "
                       "(pip install tensorboard); log.csv is still written")
            return
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def add(self, values: Mapping[str, float], step: int) -> None:
        """Write every numeric value of ``values`` at ``step`` (``step`` / ``wall_s`` excluded)."""
        if self.writer is None:
            return
        for key, value in values.items():
            if key not in ("step", "wall_s") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential moving average, debiased at the start."""
    out, avg, n = [], 0.0, 0
    for v in values:
        n += 1
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** n))
    return out


def plot_loss_curves(csv_path: str | Path, png_path: str | Path, smoothing: float = 0.8) -> Path:
    """Draw one subplot per loss of a ``log.csv``: raw, smoothed, and its ``val_`` twin.

    Every column whose name contains ``loss`` is drawn; ``val_x`` goes on the subplot of
    ``x`` as markers.

    Args:
        csv_path: a ``log.csv`` written by the trainer.
        png_path: the image to write.
        smoothing: EMA weight of the smoothed curve (0 = none).

    Returns:
        ``png_path``.

    Raises:
        FileNotFoundError: no such CSV.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state (Agg)

    csv_path, png_path = Path(csv_path), Path(png_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"log file {csv_path} does not exist")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), reader.fieldnames or []

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        pts = [(s, v) for s, v in pts if math.isfinite(v)]
        return [s for s, _ in pts], [v for _, v in pts]

    names = list(dict.fromkeys(c.removeprefix("val_") for c in columns if "loss" in c))
    cols = min(3, max(1, len(names)))
    rows_n = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows_n))
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        steps, values = series(name)
        if values:
            ax.plot(steps, values, color="C0", alpha=0.3, lw=1, label="train")
            if smoothing > 0 and len(values) > 2:
                ax.plot(steps, _smooth(values, smoothing), color="C0", lw=1.8,
                        label="train (smoothed)")
        steps, values = series(f"val_{name}")
        if values:
            ax.plot(steps, values, "o-", color="C3", ms=3, label="val")
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if not names:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no loss logged yet", ha="center", va="center")
        axes[0].set_axis_off()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    return png_path
