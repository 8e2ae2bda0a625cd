"""The model card (``README.md``) of a release made by ``kaleido pipeline``.

Everything on it is read from the run folder, never typed: the command that started the run
(``RUN/commands.log``), its resolved config (``RUN/pipeline.yaml``), each stage's wall time,
peak memory and headline (``RUN/stages/*.json``), the machine it ran on, the commands the
release stage ran to measure the release (``$ kaleido ...`` lines of ``RUN/logs/release.log``)
and their figures (the JSON files of ``kaleido eval --model`` and ``kaleido tagger eval``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import yaml

#: The file ``kaleido pipeline`` appends each of its command lines to.
COMMANDS_LOG = "commands.log"


def machine() -> str:
    """This machine in words: CPU model, cores, memory, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores{memory}, {gpu}"


def _stage_records(run: Path) -> dict[str, dict]:
    order = yaml.safe_load((run / "pipeline.yaml").read_text()) if (run / "pipeline.yaml").is_file() else {}
    records = {f.stem: json.loads(f.read_text()) for f in (run / "stages").glob("*.json")}
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(records.items(), key=lambda kv: (rank.get(kv[0].split("-")[0], 99), kv[0])))


def _commands_run(log: Path) -> list[str]:
    """The distinct ``kaleido`` commands of a stage log, the last run of each, in order."""
    if not log.is_file():
        return []
    seen: dict[str, None] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("$ kaleido "):
            seen.pop(line[2:], None)
            seen[line[2:]] = None
    return list(seen)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_model_card(run: str | Path, release: str | Path, name: str, eval_json: str | Path | None = None,
                     tagger_json: str | Path | None = None, reused: list[str] = ()) -> Path:
    """Write ``release/README.md`` from the run folder and the release's measured figures.

    Args:
        run: the ``kaleido pipeline`` run folder the release was made in.
        release: the release folder (its parts' sizes are listed).
        name: the release's name (``models/<name>``).
        eval_json: ``kaleido eval --model ... --json`` of the release (Tables 2 and 3).
        tagger_json: ``kaleido tagger eval --model ... --json`` of the release.
        reused: ``PART=FOLDER`` of the parts taken from an earlier release (pipeline
            ``release.reuse``), which this run did not train.
    """
    from kaleido.pipeline.run import format_duration
    from kaleido.evaluation.tables import (format_full_catalog, format_itm, format_table2, format_table3,
                                           retrieval_systems, table3_row)
    from kaleido.tagging.run import format_report

    run, release = Path(run), Path(release)
    records = _stage_records(run)
    started = (run / COMMANDS_LOG).read_text().splitlines()[0] if (run / COMMANDS_LOG).is_file() else ""
    sizes: dict[str, int] = {}
    for f in release.rglob("*"):
        if f.is_file() and f.name != "README.md":
            part = f.relative_to(release).parts[0]
            sizes[part] = sizes.get(part, 0) + f.stat().st_size
    total = sum(sizes.values())
    parts = dict(item.split("=", 1) for item in reused)
    made = ("every part below was trained, assembled (float16 safetensors) and measured by that command" if not parts
            else "every part below but " + ", ".join(f"`{p}`" for p in parts) + " was trained by that command, "
                 "and all were assembled (float16 safetensors) and measured by it")
    lines = [f"# {name}", "",
             f"Made by `kaleido pipeline` in one run (`{run}`): {made}. {total / 2**20:.1f} MB in all. Load it by name "
             f"once it is in `models/{name}/` (`kaleido eval --model {name}`, `kaleido tag --model {name}`, "
             f"`kaleido demo prepare --model {name}`) or by its path anywhere.", "",
             "| part | size |", "|---|---:|"]
    lines += [f"| `{part}` | {size / 2**20:.1f} MB |" for part, size in sorted(sizes.items())]
    if parts:
        lines += ["", "Taken as they are from an earlier release (trained there; see its model card):", ""]
        lines += [f"- `{part}/`: `{folder}`" for part, folder in parts.items()]
    lines += ["", "## How it was made", "", f"Machine: {machine()}.", ""]
    if started:
        lines += ["```bash", started, "```", ""]
    lines += ["| stage | wall | peak memory | headline |", "|---|---:|---:|---|"]
    for stage, r in records.items():
        figures = ", ".join(f"{k} {v}" for k, v in r.get("headline", {}).items())
        lines.append(f"| {stage} | {format_duration(r['wall_s'])} | {r['peak_mb']:,.0f} MB | {figures} |")
    done = sum(r["wall_s"] for r in records.values())
    lines += [f"| total before this card | {format_duration(done)} | | |", "",
              "Each stage's exact commands are in `RUN/stages/<stage>.json`.", "",
              "<details><summary>The resolved config of the run (RUN/pipeline.yaml)</summary>", "",
              "```yaml", (run / "pipeline.yaml").read_text().rstrip() if (run / "pipeline.yaml").is_file() else "",
              "```", "", "</details>", ""]
    lines += ["## Test-split figures, measured on this release", ""]
    commands = _commands_run(run / "logs" / "release.log")
    if eval_json and Path(eval_json).is_file():
        result = json.loads(Path(eval_json).read_text())
        lines += [f"`{c}`" for c in commands if c.startswith("kaleido eval ")] + [""]
        if "retrieval" in result:
            r = result["retrieval"]
            systems = retrieval_systems(result.get("name", name), r)
            lines += [f"KB-101 ({r['sampling']}; ± std over draws):", "", format_table2(systems, with_std=True), ""]
            full = {k: v["full_catalog"] for k, v in systems.items() if "full_catalog" in v}
            if full:
                lines += ["Full-catalog retrieval (any same-title product is a hit):", "", format_full_catalog(full), ""]
            lines += ["ITM on clean pairs, one same-subcategory negative per product:", "",
                      format_itm({result.get("name", name): r, **systems}), ""]
        if {"category", "subcategory", "caption"} & set(result):
            rows = {result.get("name", name): table3_row(result)}
            reference = _json(run / "baseline" / "result.json")
            for inputs in ("image", "image+title"):   # the linear reference's logistic regressions
                if inputs in reference.get("category", {}):
                    rows[f"{reference.get('name', 'linear reference')} ({inputs})"] = {
                        "category": reference["category"][inputs], "subcategory": reference["subcategory"][inputs]}
            lines += ["Category / subcategory of the Kaleido-BERT heads, beside the linear "
                      "reference's logistic regressions on the frozen features:", "", format_table3(rows), ""]
    if tagger_json and Path(tagger_json).is_file():
        lines += [f"`{c}`" for c in commands if c.startswith("kaleido tagger eval ")] + [""]
        lines += ["The attribute tagger (`kaleido tag`):", "", format_report(json.loads(Path(tagger_json).read_text())), ""]
    out = release / "README.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out
