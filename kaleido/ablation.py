"""Rows trained and measured at one budget: the paper's ablations (its Table 4: KPG, masking
and task switches) and the other systems of the seed papers (``--config systems``).

Every row is pre-trained, fine-tuned (``finetune_task``: retrieval, or one multitask encoder)
and evaluated with the same seeds and the same budget (the ``pretrain`` / ``finetune``
overrides apply to all rows); a row may instead name an already fine-tuned ``checkpoint``
trained at that budget elsewhere (the release's matcher), which is only evaluated. Rows
already evaluated are skipped, so a killed run resumes. With ``caption`` (that fine-tuning's
budget) every trained row also fine-tunes a caption head from its pre-trained encoder and is
scored on captioning; rows evaluated before get it on the next call. With ``dual`` the rows mine their
fine-tuning negatives from that first stage and are measured as two-stage systems re-ranking
its top candidates; with ``prior`` the linear reference is ranked on the same draws. The
summary (``OUT/summary.md``) holds Table 2, full-catalog search, ITM, Table 3 and each row's
budget (steps, wall time).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaleido.config import load_config, save_config
from kaleido.environment import environment

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
    init: str = ""                     # pre-train from this Kaleido checkpoint (a multi-stage row), not the preset's
    checkpoint: str = ""               # an already fine-tuned model at the same budget: evaluated only
    finetune_overrides: list[str] = field(default_factory=list)  # fine-tuning overrides of this row
    # the pre-trained encoder the row's caption head starts from; "" = its own pretrain/final (a
    # checkpoint row has none, so it is captioned only when this names one, e.g. its recipe re-run)
    caption_init: str = ""


@dataclass
class AblationConfig:
    """The rows and the budget every row gets."""

    rows: list[AblationRow] = field(default_factory=list)
    pretrain: list[str] = field(default_factory=lambda: ["train.epochs=1"])   # budget, all rows
    finetune: list[str] = field(default_factory=lambda: ["train.epochs=1"])   # retrieval budget
    evaluate: list[str] = field(default_factory=lambda: ["kb101.queries=200", "full_catalog=0"])
    finetune_preset: str = "default"
    finetune_task: str = "retrieval"   # retrieval | multitask (its multitask.tasks in ``finetune``)
    dual: str = ""     # first stage: fine-tuning mines from it (retrieval.mining=first_stage), eval re-ranks it
    prior: str = ""    # a `kaleido baseline linear-probe` run: the linear reference row on the same draws
    # the --cache NAME the first stage reads for every row ("" = each row's own cache): rows whose
    # inputs differ from the dual encoder's (FashionBERT's grid, ViLT's pixels) still mine from and
    # are re-ranked over the same candidates
    dual_cache: str = ""
    # caption fine-tuning overrides (its budget, on ``finetune_preset``): each trained row also
    # fine-tunes the caption task from its pre-trained encoder and is scored on captioning; empty:
    # no caption figures. A ``checkpoint`` row has no pre-trained encoder here and gets none.
    caption: list[str] = field(default_factory=list)
    # train only these rows now (names; empty = all): the others stay for a later call, and any of
    # them already evaluated in OUT is still in the summary
    only: list[str] = field(default_factory=list)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "row"


def row_overrides(row: AblationRow) -> list[str]:
    if row.tasks and row.tasks not in TASK_ROWS:
        raise ValueError(f"row {row.name!r}: unknown tasks {row.tasks!r}; one of {', '.join(TASK_ROWS)}")
    return [*(TASK_ROWS[row.tasks] if row.tasks else []), *row.overrides]


def run_ablation(cfg: AblationConfig, catalog, caches: dict[str, Path], out: str | Path,
                 split_file, split: str = "test") -> dict[str, dict]:
    """Pre-train, fine-tune and evaluate every row; returns ``{row name: its evaluation}``."""
    from kaleido.data import split_products
    from kaleido.evaluation.evaluate import EvalConfig, evaluate, find_checkpoints
    from kaleido.evaluation.tables import to_jsonable

    out = Path(out)
    if not cfg.rows:
        raise ValueError("the ablation has no rows")
    if cfg.finetune_task not in ("retrieval", "multitask"):
        raise ValueError(f"finetune_task={cfg.finetune_task!r}: choose retrieval or multitask")
    slugs = [slug(r.name) for r in cfg.rows]
    if len(set(slugs)) < len(slugs):
        raise ValueError(f"row names must differ after slug() (folder names): {slugs}")
    for row in cfg.rows:
        if row.checkpoint and (row.init or row.overrides or row.tasks or row.finetune_overrides
                               or row.preset != "default"):
            raise ValueError(f"row {row.name!r}: a checkpoint row is only evaluated; its preset / init / "
                             "overrides / tasks / finetune_overrides would not be applied")
    unknown = sorted(set(cfg.only) - {r.name for r in cfg.rows})
    if unknown:
        raise ValueError(f"only={unknown}: no such row (rows: {', '.join(r.name for r in cfg.rows)})")
    todo = [r for r in cfg.rows if not cfg.only or r.name in cfg.only]
    missing = sorted(({r.cache for r in todo} | ({cfg.dual_cache} if cfg.dual_cache else set())) - set(caches))
    if missing:
        raise ValueError(f"rows need the caches {missing}; give them as --cache NAME=PATH "
                         f"(have: {sorted(caches) or 'none'})")
    for row in todo:
        for what, path in (("init", row.init), ("checkpoint", row.checkpoint), ("caption_init", row.caption_init)):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"row {row.name!r}: {what}={path} does not exist")
    for row in todo:
        if _mines(cfg, row) and not cfg.dual:
            raise ValueError(f"row {row.name!r} mines its fine-tuning negatives from a first stage "
                             "(retrieval.mining=first_stage): give dual=PATH")
    save_config(cfg, out, "ablation.yaml")
    dual_cache = str(caches[cfg.dual_cache]) if cfg.dual_cache else ""
    ecfg = load_config(EvalConfig, None, [*cfg.evaluate, *([f"dual={cfg.dual}"] if cfg.dual else []),
                                          *([f"dual_cache={dual_cache}"] if dual_cache else []),
                                          *([f"prior={cfg.prior}"] if cfg.prior else [])])
    # what every row is measured under; a row evaluated under another protocol is measured again
    protocol = json.loads(json.dumps(to_jsonable({"split": split, "evaluate": asdict(ecfg)})))
    products = split_products(catalog, split_file, split)
    results = {}
    for row in cfg.rows:
        folder = out / slug(row.name)
        done = folder / "eval.json"
        saved = json.loads(done.read_text()) if done.is_file() else None
        if saved and saved.get("protocol") == protocol:
            if _caption_due(cfg, row, saved) and row in todo:
                saved = _add_caption(cfg, row, catalog, caches[row.cache], folder, split_file, products, ecfg, saved)
                done.write_text(json.dumps(to_jsonable(saved), indent=2))
            else:
                log.info("row %r already evaluated; skipped", row.name)
            results[row.name] = saved
            continue
        if row not in todo:
            if saved:
                raise ValueError(f"row {row.name!r} in {folder} was measured under another protocol; "
                                 "include it in only= to measure it again")
            log.info("row %r: not in only=; left for a later call", row.name)
            continue
        if saved:
            log.info("row %r: evaluated under another protocol; measured again (training is kept)", row.name)
            budget = {k: v for k, v in saved["budget"].items() if k != "eval_s"}
        else:
            budget = _train_row(cfg, row, catalog, caches[row.cache], folder, split_file, dual_cache)
        model = Path(row.checkpoint) if row.checkpoint else folder / cfg.finetune_task / "final"
        start = time.monotonic()
        result = evaluate(find_checkpoints(model), products, caches[row.cache], ecfg)
        budget["eval_s"] = round(time.monotonic() - start, 1)
        folder.mkdir(parents=True, exist_ok=True)                 # a checkpoint row trained nothing here
        result = {"row": row.name, "model": str(model), "budget": budget, "protocol": protocol, **result,
                  "environment": environment()}
        if saved and "caption_recipe" in saved:   # re-measured under a new protocol: the caption stays
            result = {**result, "caption": saved["caption"], "caption_recipe": saved["caption_recipe"],
                      "budget": {**budget, **{k: v for k, v in saved["budget"].items() if k.startswith("caption")}}}
        if _caption_due(cfg, row, result):
            result = _add_caption(cfg, row, catalog, caches[row.cache], folder, split_file, products, ecfg, result)
        done.write_text(json.dumps(to_jsonable(result), indent=2))
        results[row.name] = json.loads(done.read_text())
    (out / "summary.md").write_text(format_summary(results))
    return results


def _caption_due(cfg: AblationConfig, row: AblationRow, result: dict) -> bool:
    """Whether the row still lacks a caption figure at the configured caption budget."""
    return (bool(cfg.caption) and (not row.checkpoint or bool(row.caption_init))
            and result.get("caption_recipe") != list(cfg.caption))


def _add_caption(cfg: AblationConfig, row: AblationRow, catalog, cache: Path, folder: Path, split_file,
                 products, ecfg, result: dict) -> dict:
    """Fine-tune the caption task from the row's pre-trained encoder (``cfg.caption``, resumable)
    and score its captions on ``products``; ``result`` with ``caption`` and its budget added."""
    from kaleido.evaluation.evaluate import evaluate
    from kaleido.finetune import FinetuneConfig, finetune

    init = Path(row.caption_init) if row.caption_init else folder / "pretrain" / "final"
    if not init.is_dir():
        raise FileNotFoundError(f"row {row.name!r}: no pre-trained encoder at {init} to fine-tune a caption head from")
    log.info("row %r: fine-tuning the caption task", row.name)
    fcfg = load_config(FinetuneConfig, cfg.finetune_preset, cfg.caption, component="finetune")
    fine = finetune("caption", fcfg, catalog, cache, init, folder / "caption", split_file=split_file)
    start = time.monotonic()
    scored = evaluate({"caption": folder / "caption" / "final"}, products, cache, ecfg)
    budget = {**result["budget"], "caption_steps": fine.steps, "caption_s": round(fine.wall_s, 1),
              "caption_eval_s": round(time.monotonic() - start, 1), **({"caption_init": row.caption_init}
                                                                      if row.caption_init else {})}
    return {**result, "caption": scored["caption"], "caption_recipe": list(cfg.caption), "budget": budget}


def _mines(cfg: AblationConfig, row: AblationRow) -> bool:
    """Whether the row's fine-tuning mines negatives from the first stage."""
    setting = [o.replace(" ", "") for o in [*cfg.finetune, *row.finetune_overrides]
               if o.replace(" ", "").startswith("retrieval.mining=")]
    return bool(setting) and setting[-1] == "retrieval.mining=first_stage"


def _train_row(cfg: AblationConfig, row: AblationRow, catalog, cache: Path, folder: Path, split_file,
               dual_cache: str) -> dict:
    """Pre-train and fine-tune one row (nothing for a ``checkpoint`` row); its budget."""
    from kaleido.finetune import FinetuneConfig, finetune
    from kaleido.pretrain import PretrainConfig, pretrain

    if row.checkpoint:
        return {"checkpoint": row.checkpoint}
    log.info("row %r: pre-training", row.name)
    overrides = [*cfg.pretrain, *row_overrides(row), *([f"init={row.init}"] if row.init else [])]
    pcfg = load_config(PretrainConfig, row.preset, overrides, component="pretrain")
    pre = pretrain(pcfg, catalog, cache, folder / "pretrain", split_file=split_file)
    log.info("row %r: fine-tuning (%s)", row.name, cfg.finetune_task)
    mining = [f"retrieval.first_stage={cfg.dual}", *([f"retrieval.first_stage_cache={dual_cache}"]
                                                     if dual_cache else [])] if _mines(cfg, row) else []
    fcfg = load_config(FinetuneConfig, cfg.finetune_preset, [*cfg.finetune, *mining, *row.finetune_overrides],
                       component="finetune")
    fine = finetune(cfg.finetune_task, fcfg, catalog, cache, folder / "pretrain" / "final",
                    folder / cfg.finetune_task, split_file=split_file)
    budget = {"pretrain_steps": pre.steps, "pretrain_s": round(pre.wall_s, 1),   # over every resume
              "finetune_steps": fine.steps, "finetune_s": round(fine.wall_s, 1), "init": row.init or pcfg.init}
    stage1 = Path(row.init).parent / "log.csv" if row.init else None
    if stage1 and stage1.is_file():   # a multi-stage row: what its first stage cost
        import pandas as pd

        log_ = pd.read_csv(stage1)
        budget["init_steps"] = int(log_["step"].max()) if "step" in log_ and len(log_) else None
    return budget


def format_summary(results: dict[str, dict]) -> str:
    """The rows' tables in Markdown: KB-101 (with the linear reference and first-stage rows when
    measured), full-catalog search, ITM, category / subcategory / captioning, and the budgets."""
    from kaleido.evaluation.tables import (format_full_catalog, format_itm, format_table2, format_table3,
                                           retrieval_systems, table3_row)

    measured = {(r.get("products"), r["retrieval"].get("sampling")) for r in results.values()}
    if len(measured) > 1:   # the shared rows (reference, first stage) would be one row's, not all's
        raise ValueError(f"the rows were measured on different products or draws: {sorted(map(str, measured))}")
    systems: dict[str, dict] = {}
    for name, result in results.items():
        systems.update(retrieval_systems(name, result["retrieval"]))   # shared rows (same draws) merge
    parts = ["## KB-101 (mean ± std over the draws)", format_table2(systems, with_std=True)]
    catalog = {n: r["full_catalog"] for n, r in systems.items() if isinstance(r, dict) and r.get("full_catalog")}
    if catalog:
        parts += ["## Full-catalog retrieval (a same-title product is a hit)", format_full_catalog(catalog)]
    itm = {n: r for n, r in systems.items() if isinstance(r, dict) and "itm" in r}
    for name, result in results.items():   # a row measured only as a re-ranker: its own ITM still counts
        if name not in systems and "itm" in result["retrieval"]:
            itm[f"{name} ITM alone"] = {"itm": result["retrieval"]["itm"]}
    if itm:
        parts += ["## ITM on clean pairs (same-subcategory negatives)", format_itm(itm)]
    table3 = {n: table3_row(r) for n, r in results.items() if table3_row(r)}
    if table3:
        parts += ["## Category, subcategory, captioning", format_table3(table3)]
    captions = any("caption_steps" in r.get("budget", {}) for r in results.values())
    budget = ["| row | pre-training steps | pre-training wall | fine-tuning steps | fine-tuning wall | eval wall |"
              + " caption steps | caption fine-tuning wall | caption eval wall |" * captions,
              "|---|---:|---:|---:|---:|---:|" + "---:|---:|---:|" * captions]
    for name, result in results.items():
        b = result.get("budget", {})
        cap = (f" {b.get('caption_steps', '-')} | {_minutes(b.get('caption_s'))} | "
               f"{_minutes(b.get('caption_eval_s'))} |") * captions
        if "checkpoint" in b:
            budget.append(f"| {name} | trained elsewhere: {b['checkpoint']} | | | | {_minutes(b.get('eval_s'))} |{cap}")
        else:
            first = (f" after {b['init_steps']} steps of {b['init']}" if b.get("init_steps")
                     else f" from {b['init']}" if b.get("init") not in (None, "minilm") else "")
            budget.append(f"| {name} | {b.get('pretrain_steps', '-')}{first} | {_minutes(b.get('pretrain_s'))} | "
                          f"{b.get('finetune_steps', '-')} | {_minutes(b.get('finetune_s'))} | "
                          f"{_minutes(b.get('eval_s'))} |{cap}")
    parts += ["## Budget (this machine)", "\n".join(budget)]
    return "\n\n".join(parts) + "\n"


def _minutes(seconds) -> str:
    if seconds is None:
        return "-"
    from kaleido.pipeline.run import format_duration
    return format_duration(float(seconds))
