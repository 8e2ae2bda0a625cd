"""The software a figure was made with: library versions, threads, device.

Two runs of one command on one machine give the same numbers only under the same libraries
(a different ``transformers`` or ``torch`` build changes the float arithmetic, and training
amplifies it). The dependency list admits version ranges, so every training run records what
it ran under (``environment.json`` beside ``log.csv``), and ``kaleido eval`` / ``kaleido
ablate`` results carry it too::

    from kaleido.environment import environment, record_environment
    environment()["packages"]["torch"]          # '2.14.1'
    record_environment("runs/pretrain", step=0)  # appends an entry when anything changed
"""

from __future__ import annotations

import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

#: The distributions whose version changes the numbers.
PACKAGES = ("kaleido", "torch", "torchvision", "transformers", "timm", "numpy", "onnxruntime",
            "faiss-cpu", "scikit-learn", "opencv-contrib-python-headless")
FILENAME = "environment.json"


def environment() -> dict:
    """Python, platform, the :data:`PACKAGES` installed (absent ones left out) and torch's threads."""
    import torch

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "packages": packages}


def record_environment(run_dir: str | Path, step: int = 0) -> Path:
    """Append this process's environment to ``run_dir/environment.json`` when it differs from
    the last entry there (a run resumed under other libraries shows both, with ``from_step``)."""
    path = Path(run_dir) / FILENAME
    entries = []
    if path.is_file():
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; starting it again", path)
    now = environment()
    last = {k: v for k, v in entries[-1].items() if k != "from_step"} if entries else None
    if last != now:
        if last is not None:
            changed = sorted(k for k in set(now["packages"]) | set(last.get("packages", {}))
                             if now["packages"].get(k) != last.get("packages", {}).get(k))
            log.warning("%s resumed at step %d under another environment (packages changed: %s); "
                        "its numbers will not match an uninterrupted run", run_dir, step,
                        ", ".join(changed) or "none; threads or platform")
        entries.append({"from_step": step, **now})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=2))
    return path
