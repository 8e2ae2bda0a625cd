"""Choose each system's fusion weight on val and report its test KB-101 at that weight.

The two-stage search scores a candidate by the first stage's logit + w x ITM log-odds. Reading w
off the test split flatters the test figure; this picks w on the val split instead. Each system
needs two `kaleido eval --json` results (or `kaleido ablate` rows' ``eval.json``) measured with
the same ``fusion_weights``, one per split:

    kaleido eval --checkpoint RUN/multitask/final --split val --json runs/systems/val/ROW.json \\
        dual=... dual_cache=... prior=... rerank_k=10 "fusion_weights=[0.25,0.5,1]" exhaustive=false
    python scripts/choose_fusion_weight.py --val runs/systems/val/ROW.json --test runs/systems/table/ROW/eval.json [...]

``--val`` and ``--test`` pair up in order. The table is Markdown, one row per system.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fused(path: Path) -> tuple[str, dict[float, tuple[float, float]], str]:
    """(system name, {w: (SumR, std over draws)}, split) of one eval JSON."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a readable eval JSON ({err})")
    by_weight = (result.get("retrieval") or {}).get("two_stage_fused")
    if not by_weight:
        raise SystemExit(f"{path}: no fused two-stage results (evaluate with dual=... fusion_weights=[...])")
    split = (result.get("protocol") or {}).get("split") or result.get("split") or "?"
    name = str(result.get("row") or result.get("name") or path.parent.name)
    return name, {float(w): (r["SumR"], r["std"]["SumR"]) for w, r in by_weight.items()}, split


def choose(val: dict[float, tuple[float, float]]) -> float:
    """The weight with the highest val SumR (the smaller weight on a tie)."""
    return max(sorted(val), key=lambda w: val[w][0])


def table(pairs: list[tuple[Path, Path]]) -> str:
    lines = ["| system | val SumR per w | w chosen on val | test SumR at that w | best w on test (its SumR) |",
             "|---|---|---:|---:|---|"]
    for val_path, test_path in pairs:
        name, val, _ = fused(val_path)
        _, test, _ = fused(test_path)
        if set(val) != set(test):
            raise SystemExit(f"{val_path} and {test_path} fuse at different weights: "
                             f"{sorted(val)} against {sorted(test)}")
        w = choose(val)
        best = choose(test)
        per_w = ", ".join(f"{x:g}: {val[x][0]:.1f}" for x in sorted(val))
        lines.append(f"| {name} | {per_w} | {w:g} | {test[w][0]:.1f} ± {test[w][1]:.1f} | "
                     f"{best:g} ({test[best][0]:.1f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val", type=Path, nargs="+", required=True, help="eval JSONs on the val split")
    parser.add_argument("--test", type=Path, nargs="+", required=True, help="eval JSONs on the test split, same order")
    args = parser.parse_args(argv)
    if len(args.val) != len(args.test):
        parser.error(f"{len(args.val)} --val files against {len(args.test)} --test files")
    for path, want in [(p, "val") for p in args.val] + [(p, "test") for p in args.test]:
        split = fused(path)[2]
        if split not in (want, "?"):
            parser.error(f"{path} was measured on {split}, given as {want}")
    print(table(list(zip(args.val, args.test))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
