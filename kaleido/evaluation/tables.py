"""The paper's Tables 2 (retrieval) and 3 (category and captioning) as Markdown and JSON.

The format functions take the dicts that :mod:`kaleido.evaluation.metrics` and
:func:`sat_captioner.metrics.caption_scores` return (or the same dicts read back from JSON),
one per system, and print one Markdown (pipe) table row per system, ready for the README.
A part that is missing prints as ``-``; a caption score that could not be computed
(METEOR is ``None`` without Java) prints as ``n/a``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

MISSING = "-"
NOT_AVAILABLE = "n/a"
CAPTION_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps`` accepts.

    Numpy scalars become Python numbers, arrays become (nested) lists, dataclasses (such as
    :class:`~kaleido.evaluation.RetrievalDraw`) become dicts, tuples and sets become lists,
    dict keys become strings and paths become strings.

    Args:
        obj: a result, possibly nested.

    Returns:
        The converted object.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _number(value: Any, scale: float, decimals: int) -> str:
    """A value times ``scale`` with ``decimals`` decimals; None -> n/a; non-numbers -> -."""
    if value is None:
        return NOT_AVAILABLE
    try:
        value = float(value)
    except (TypeError, ValueError):
        return MISSING
    if math.isnan(value):
        return NOT_AVAILABLE
    return f"{value * scale:.{decimals}f}"


def _get(row: Any, *keys: str) -> Any:
    """``row[k1][k2]...`` or the marker ``...`` (missing) at the first absent level."""
    for key in keys:
        if not isinstance(row, Mapping) or key not in row:
            return ...
        row = row[key]
    return row


def _cell(row: Any, keys: Sequence[str], scale: float, decimals: int) -> str:
    value = _get(row, *keys)
    return MISSING if value is ... else _number(value, scale, decimals)


def _markdown(header: Sequence[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _system(name: Any) -> str:
    return str(name).replace("|", "\\|")


def _check_rows(rows: Any, what: str) -> None:
    if not isinstance(rows, Mapping):
        raise ValueError(f"{what} takes {{system name: results dict}}, got {type(rows).__name__}")


def format_table2(rows: Mapping[str, Mapping], with_std: bool = False) -> str:
    """Table 2 of the paper: KB-101 retrieval, one row per system.

    Args:
        rows: ``{system name: retrieval_summary(...) dict}``.
        with_std: append ``± std`` over the draws to every value (when the dict has ``std``).

    Returns:
        A Markdown table with columns ITR R@1 R@5 R@10 | TIR R@1 R@5 R@10 | SumR, recalls in
        percent with 2 decimals, SumR with 1 decimal.
    """
    _check_rows(rows, "format_table2")
    columns = [(d, f"R@{k}") for d in ("ITR", "TIR") for k in (1, 5, 10)]
    header = ["system"] + [f"{d} {k}" for d, k in columns] + ["SumR"]
    body = []
    for name, row in rows.items():
        cells = []
        # recalls are fractions shown in percent; SumR is already x100
        for keys, scale, decimals in [(c, 100.0, 2) for c in columns] + [(("SumR",), 1.0, 1)]:
            cell = _cell(row, keys, scale, decimals)
            spread = _get(row, "std", *keys)
            if with_std and cell not in (MISSING, NOT_AVAILABLE) and spread is not ...:
                cell += " ± " + _number(spread, scale, decimals)
            cells.append(cell)
        body.append([_system(name)] + cells)
    return _markdown(header, body)


def table3_row(result: Mapping) -> dict:
    """The part of one ``evaluate`` result (or its JSON) that :func:`format_table3` reads:
    ``{"category", "subcategory", "caption": scores}``, whichever are there."""
    row = {k: result[k] for k in ("category", "subcategory") if k in result}
    if "caption" in result:
        row["caption"] = result["caption"]["scores"]
    return row


def format_table3(rows: Mapping[str, Mapping]) -> str:
    """Table 3 of the paper: category (CR), subcategory (SUB) and captioning, one row per system.

    Args:
        rows: ``{system name: {"category": classification_metrics dict, "subcategory": ...,
            "caption": {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}}}``; any part may be absent.
            Caption scores are those of ``caption_scores`` (fractions, CIDEr unscaled).

    Returns:
        A Markdown table: accuracy and macro-F1 in percent with 2 decimals, caption scores
        x100 with 1 decimal as in the paper (BLEU-4 5.7, CIDEr 32.6); ``-`` where a part is
        missing, ``n/a`` where a score is None (METEOR without Java).
    """
    _check_rows(rows, "format_table3")
    header = ["system", "CR acc", "CR macro-F1", "SUB acc", "SUB macro-F1", *CAPTION_METRICS]
    body = []
    for name, row in rows.items():
        cells = [_cell(row, (part, key), 100.0, 2)
                 for part in ("category", "subcategory") for key in ("accuracy", "macro_f1")]
        cells += [_cell(row, ("caption", key), 100.0, 1) for key in CAPTION_METRICS]
        body.append([_system(name)] + cells)
    return _markdown(header, body)


def format_full_catalog(rows: Mapping[str, Mapping]) -> str:
    """Full-catalog retrieval (what a shopper sees), one row per system.

    Args:
        rows: ``{system name: full_catalog_ranks(...) dict}``.

    Returns:
        A Markdown table: catalog size N, then per direction R@1/5/10 (percent, 2 decimals),
        median rank (MedR) and mean reciprocal rank (MRR, 3 decimals).
    """
    _check_rows(rows, "format_full_catalog")
    header = ["system", "N"]
    for d in ("ITR", "TIR"):
        header += [f"{d} R@1", f"{d} R@5", f"{d} R@10", f"{d} MedR", f"{d} MRR"]
    body = []
    for name, row in rows.items():
        n = _get(row, "n")
        cells = [MISSING if n is ... or n is None else str(int(n))]
        for d in ("ITR", "TIR"):
            cells += [_cell(row, (d, f"R@{k}"), 100.0, 2) for k in (1, 5, 10)]
            medr = _get(row, d, "median_rank")
            cells.append(MISSING if medr is ... else
                         (NOT_AVAILABLE if medr is None else f"{float(medr):g}"))
            cells.append(_cell(row, (d, "mrr"), 1.0, 3))
        body.append([_system(name)] + cells)
    return _markdown(header, body)


def retrieval_systems(name: str, result: Mapping) -> dict[str, Mapping]:
    """The rows of one ``evaluate(...)["retrieval"]`` result (or its JSON), named for a table.

    A plain result is one row, ``name``. A result with the linear reference (``prior``), the
    reference fused with ITM (``fused``), or a first stage (``dual``: its own row, its top
    ``rerank_k`` re-ranked by ITM alone, and each fused weight) gets a row for each, in that
    order: the rows :func:`format_table2`, :func:`format_full_catalog` and :func:`format_itm`
    print. JSON turns the fusion weights into strings; both spellings are read.
    """
    rows: dict[str, Mapping] = {}
    if "prior" in result:
        rows["linear reference (same draws)"] = result["prior"]
    if "ITR" in result:
        rows[name] = result
    if "fused" in result:
        rows[f"{name} ITM + {float(result['fused']['prior_weight']):g} x linear reference"] = result["fused"]
    if "dual" in result:
        k = result["two_stage"]["rerank_k"]
        rows["first stage (same draws)"] = result["dual"]
        rows[f"first stage top {k} + {name} ITM"] = result["two_stage"]
        for w, fused in result.get("two_stage_fused", {}).items():
            rows[f"first stage top {k}, its logit + {float(w):g} x {name} ITM"] = fused
    return rows


def format_itm(rows: Mapping[str, Mapping]) -> str:
    """ITM on clean pairs (each product's true pair and one same-subcategory negative), one row
    per system that has ``itm`` (:func:`kaleido.evaluation.itm.itm_accuracy`): the share of
    true pairs scored above their negative, the ROC AUC, and the sign accuracy (positives /
    negatives) with its pair count. Systems without ``itm`` are left out."""
    _check_rows(rows, "format_itm")
    header = ["system", "true pair above its negative", "ROC AUC", "accuracy", "positives", "negatives", "pairs"]
    body = []
    for name, row in rows.items():
        if not isinstance(row, Mapping) or "itm" not in row:
            continue
        itm = row["itm"]
        pairs = _get(itm, "pairs")
        body.append([_system(name)]
                    + [_cell(itm, (key,), 1.0, 3) for key in ("pairwise_accuracy", "auc", "accuracy",
                                                             "positive_accuracy", "negative_accuracy")]
                    + [MISSING if pairs is ... else str(int(pairs))])
    return _markdown(header, body)
