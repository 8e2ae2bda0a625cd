"""Print Tables 2 and 3 for several systems side by side, from their ``kaleido eval --json`` files.

    python scripts/compare_evals.py runs/finetune/kaleido-bert/eval.json runs/finetune/fashionbert/eval.json
    python scripts/compare_evals.py --names Kaleido-BERT FashionBERT A.json B.json --out tables.md

Ablation rows (``kaleido ablate``'s ``<row>/eval.json``) work too: their name is the row. A
two-stage result (``kaleido eval ... dual=D prior=B``) brings its first stage, linear reference
and fused rows, each prefixed with its system's name when several systems are compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kaleido.evaluation.tables import (format_full_catalog, format_itm, format_table2, format_table3,
                                      retrieval_systems, table3_row)


def load(path: Path) -> tuple[str, dict]:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a readable eval JSON ({err})")
    if not isinstance(result, dict) or not {"retrieval", "category", "caption"} & set(result):
        raise SystemExit(f"{path}: no retrieval, category or caption results in it")
    return str(result.get("name") or result.get("row") or path.parent.name), result


def report(results: dict[str, dict]) -> str:
    parts = []
    retrieval = {n: r["retrieval"] for n, r in results.items() if "retrieval" in r}
    if retrieval:
        sampling = {r.get("sampling", "") for r in retrieval.values()}
        # a two-stage result brings its first stage and reference rows: each system's are named for it
        rows = {}
        for n, r in retrieval.items():
            own = retrieval_systems(n, r)
            rows.update({k if k == n or f"{n} ITM" in k or len(retrieval) == 1 else f"{n}: {k}": v
                         for k, v in own.items()})
        parts.append("Table 2: KB-101 retrieval" + (f" ({sampling.pop()})" if len(sampling) == 1 else "")
                     + "\n\n" + format_table2(rows, with_std=True))
        full = {n: r["full_catalog"] for n, r in rows.items() if "full_catalog" in r}
        if full:
            parts.append("Full-catalog retrieval\n\n" + format_full_catalog(full))
        itm = {**{n: r for n, r in retrieval.items() if "itm" in r}, **rows}
        if any("itm" in r for r in itm.values()):
            parts.append("ITM on clean pairs (1 true pair + 1 same-subcategory negative per product)\n\n"
                         + format_itm(itm))
    table3 = {name: row for name, r in results.items() if (row := table3_row(r))}
    if table3:
        parts.append("Table 3: category, subcategory, captioning\n\n" + format_table3(table3))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("evals", nargs="+", type=Path, help="eval JSON files, one per system")
    p.add_argument("--names", nargs="+", default=None, help="system names, in the order of the files")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = p.parse_args(argv)
    if args.names and len(args.names) != len(args.evals):
        p.error(f"{len(args.names)} names for {len(args.evals)} files")
    results = {}
    for i, path in enumerate(args.evals):
        name, result = load(path)
        results[args.names[i] if args.names else name] = result
    text = report(results)
    sys.stdout.write(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
