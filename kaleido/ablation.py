"""The paper's ablations (its Table 4) as runnable rows: KPG, masking and task switches.

Every row is pre-trained, fine-tuned for retrieval and evaluated with the same seeds and
the same budget (the ``budget`` overrides apply to all rows); rows already evaluated are
skipped, so a killed ablation resumes. The summary is Table 2's columns per row.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from kaleido.config import load_config, save_config

log = logging.getLogger(__name__)

#: The pre-training task switches of the paper's Table 4 (B = ITM + AMLM, with ITC when the preset has it).
TASK_ROWS = {
    "B": ["tasks.rr=0", "tasks.jps=0", "tasks.cp=0", "tasks.g2cm=0", "tasks.b2cm=0"],
    "B+I": ["tasks.jps=0", "tasks.cp=0", "tasks.g2cm=0", "tasks.b2cm=0"],
    "B+I~II": ["tasks.cp=0", "tasks.g2cm=0", "tasks.b2cm=0"],
    "B+I~III": ["tasks.g2cm=0", "tasks.b2cm=0"],
    "B+I~IV": ["tasks.b2cm=0"],
    "B+I~V": [],
    "B+V": ["tasks.rr=0", "tasks.jps=0", "tasks.cp=0", "tasks.g2cm=0"],
}


@dataclass
class AblationRow:
    """One row: which patch cache, which pre-training preset and overrides."""

    name: str = ""
    cache: str = "kaleido-saliency"    # key of --cache NAME=PATH (the KPG variant)
    preset: str = "default"            # pretrain preset (fashionbert for the baseline)
    overrides: list[str] = field(default_factory=list)  # pretrain overrides of this row
    tasks: str = ""                    # a TASK_ROWS name (B, B+I, ..., B+V); "" keeps the preset's


@dataclass
class AblationConfig:
    """The rows and the budget every row gets."""

    rows: list[AblationRow] = field(default_factory=list)
    pretrain: list[str] = field(default_factory=lambda: ["train.epochs=1"])   # budget, all rows
    finetune: list[str] = field(default_factory=lambda: ["train.epochs=1"])   # retrieval budget
    evaluate: list[str] = field(default_factory=lambda: ["kb101.queries=200", "full_catalog=0"])
    finetune_preset: str = "default"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "row"


def row_overrides(row: AblationRow) -> list[str]:
    if row.tasks and row.tasks not in TASK_ROWS:
        raise ValueError(f"row {row.name!r}: unknown tasks {row.tasks!r}; one of {', '.join(TASK_ROWS)}")
    return [*(TASK_ROWS[row.tasks] if row.tasks else []), *row.overrides]


def run_ablation(cfg: AblationConfig, catalog, caches: dict[str, Path], out: str | Path,
                 split_file, split: str = "test") -> dict[str, dict]:
    """Pre-train, fine-tune and evaluate every row; returns ``{row name: retrieval figures}``."""
    from kaleido.evaluation.evaluate import EvalConfig, evaluate
    from kaleido.data import split_products
    from kaleido.finetune import FinetuneConfig, finetune
    from kaleido.pretrain import PretrainConfig, pretrain

    out = Path(out)
    if not cfg.rows:
        raise ValueError("the ablation has no rows")
    missing = sorted({r.cache for r in cfg.rows} - set(caches))
    if missing:
        raise ValueError(f"rows need the caches {missing}; give them as --cache NAME=PATH "
                         f"(have: {sorted(caches) or 'none'})")
    save_config(cfg, out, "ablation.yaml")
    results = {}
    for row in cfg.rows:
        folder = out / slug(row.name)
        done = folder / "eval.json"
        if done.is_file():
            results[row.name] = json.loads(done.read_text())["retrieval"]
            log.info("row %r already evaluated; skipped", row.name)
            continue
        log.info("row %r: pre-training", row.name)
        pcfg = load_config(PretrainConfig, row.preset, [*cfg.pretrain, *row_overrides(row)], component="pretrain")
        pretrain(pcfg, catalog, caches[row.cache], folder / "pretrain", split_file=split_file)
        fcfg = load_config(FinetuneConfig, cfg.finetune_preset, cfg.finetune, component="finetune")
        finetune("retrieval", fcfg, catalog, caches[row.cache], folder / "pretrain" / "final",
                 folder / "retrieval", split_file=split_file)
        ecfg = load_config(EvalConfig, None, cfg.evaluate)
        products = split_products(catalog, split_file, split)
        result = evaluate({"retrieval": folder / "retrieval" / "final"}, products, caches[row.cache], ecfg)
        from kaleido.evaluation.tables import to_jsonable
        done.write_text(json.dumps(to_jsonable({"row": row.name, **result}), indent=2))
        results[row.name] = result["retrieval"]
    from kaleido.evaluation.tables import format_table2
    table = format_table2(results)
    (out / "summary.md").write_text(table + "\n")
    return results
