"""``run_pipeline``: every stage in order, each skipped when it finished before and resumed
when it did not; wall time, peak memory and headline figures per stage in ``RUN/summary.json``.

Each stage's commands run as child processes (``python -m kaleido.cli ...``), so a stage's
peak memory is its own (``os.wait4``), its output goes to the terminal and to
``RUN/logs/<stage>.log``, and a ``kill -9`` of the pipeline takes the running stage with it
(the child is told to die with its parent). A stage that finished writes
``RUN/stages/<stage>.json``; the same command line later skips it and resumes the first
unfinished one, whose own checkpoints (cache shards, training state, the alignment store,
index chunks) carry on from where it stopped.

The resolved config of the whole run is written once, to ``RUN/pipeline.yaml``; a later call
with other settings is refused rather than mixing two configs in one folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from kaleido.cli.workers import die_with_parent
from kaleido.config import ConfigError
from kaleido.pipeline.config import PipelineConfig
from kaleido.pipeline.stages import Stage, build_stages
from kaleido.release.card import COMMANDS_LOG

CONFIG_NAME = "pipeline.yaml"
SUMMARY_NAME = "summary.json"


class StageFailed(RuntimeError):
    """A stage's command exited with an error (its log names what went wrong)."""


def run_command(argv: list[str], log_file: Path, echo: bool = True) -> tuple[int, float, int]:
    """Run ``kaleido ARGV`` in a child process, its output teed to ``log_file``.

    Returns:
        ``(exit status, wall seconds, peak resident memory in KiB)``. The peak is the child
        process's own (``wait4``), not its data-loader workers'; it is at least the size of the
        pipeline process it was forked from (Linux counts the pre-``exec`` image).
    """
    start = time.monotonic()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"$ kaleido {' '.join(argv)}\n".encode())
        # unbuffered: prints and progress bars keep their order, and nothing is lost to a kill
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "kaleido.cli", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env,
                                preexec_fn=die_with_parent if os.name == "posix" else None)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            log.write(chunk)
            log.flush()                                          # the log shows progress as it happens
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.monotonic() - start, int(usage.ru_maxrss)


def _resolved(cfg: PipelineConfig, catalog_args: list[str]) -> dict:
    return {"catalog": catalog_args, **asdict(cfg)}


def _check_config(run: Path, resolved: dict) -> None:
    path = run / CONFIG_NAME
    if path.is_file():
        before = yaml.safe_load(path.read_text())
        # a setting added to a stage since the run started has its default value there
        defaults = asdict(PipelineConfig())
        before = {k: ({**defaults[k], **v} if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v)
                  for k, v in before.items()}
        # a stage added to the pipeline since the run started joins it, with the settings given now
        added = set(resolved) - set(before)
        now = {k: v for k, v in resolved.items() if k not in added}
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ConfigError(f"{run} was started with other settings ({', '.join(changed)} differ; see "
                              f"{path}); rerun with the same options to resume, or choose a new --out")
        if added or yaml.safe_load(path.read_text()) != resolved:
            path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    else:
        run.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(resolved, sort_keys=False))


def run_pipeline(cfg: PipelineConfig, catalog_args: list[str], run: str | Path, echo: bool = True,
                 command: str | None = None) -> dict:
    """Run (or resume) every enabled stage of ``cfg`` on a catalog into the folder ``run``.

    Args:
        cfg: the stages and their presets / overrides.
        catalog_args: the catalog options as argv: ``["--catalog", C, "--columns", X, ...]``.
        run: the run folder (created; resumed when it holds an earlier run of the same config).
        echo: stream each stage's output to stdout (always written to ``RUN/logs/``); one
            progress line per stage is printed either way.
        command: the command line that called this, appended to ``RUN/commands.log`` (the
            model card quotes the first one).

    Returns:
        The summary (also ``RUN/summary.json``): per stage its status (``ran`` / ``skipped``),
        wall seconds, peak memory, headline figures and outputs.

    Raises:
        StageFailed: a stage's command failed; the stages before it stay done.
    """
    run = Path(run)
    _check_config(run, _resolved(cfg, catalog_args))
    stages = build_stages(cfg, catalog_args, run)
    if command:
        with (run / COMMANDS_LOG).open("a") as f:
            f.write(command + "\n")
    summary = {"run": str(run), "config": str(run / CONFIG_NAME), "stages": {}}
    for i, stage in enumerate(stages, 1):
        marker = run / "stages" / f"{stage.name}.json"
        if marker.is_file():
            record = {**json.loads(marker.read_text()), "status": "skipped"}
            print(f"== [{i}/{len(stages)}] {stage.name}: done before ({record['wall_s']:.0f} s), skipped", flush=True)
        else:
            print(f"== [{i}/{len(stages)}] {stage.name}", flush=True)
            record = _run_stage(stage, run, echo)
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            tmp.replace(marker)                                   # the stage counts as done only now
            print(f"== {stage.name}: {record['wall_s']:.0f} s, peak {record['peak_mb']:.0f} MB, "
                  f"{record['headline']}", flush=True)
        summary["stages"][stage.name] = record
    summary["wall_s"] = sum(r["wall_s"] for r in summary["stages"].values())  # every stage, this call's or earlier
    (run / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _run_stage(stage: Stage, run: Path, echo: bool) -> dict:
    wall, peak = 0.0, 0
    for argv in stage.commands:
        code, seconds, rss = run_command(argv, run / "logs" / f"{stage.name}.log", echo)
        wall, peak = wall + seconds, max(peak, rss)
        if code != 0:
            raise StageFailed(f"stage {stage.name} failed (exit {code}) running `kaleido {' '.join(argv)}`; "
                              f"see {run / 'logs' / f'{stage.name}.log'}. Fix it and run the same command "
                              "again: the finished stages are skipped")
    try:
        headline = stage.headline()
    except (OSError, ValueError, KeyError) as err:  # figures are a report, never a reason to redo a stage
        headline = {"error": f"could not read the figures: {err}"}
    return {"status": "ran", "wall_s": round(wall, 1), "peak_mb": round(peak / 1024, 1),
            "headline": headline, "outputs": stage.outputs, "commands": [" ".join(c) for c in stage.commands]}


def format_summary(summary: dict) -> str:
    """The summary as a Markdown table: stage, status, wall, peak memory, headline figures."""
    lines = ["| stage | status | wall | peak memory | headline |", "|---|---|---:|---:|---|"]
    for name, r in summary["stages"].items():
        figures = ", ".join(f"{k} {v}" for k, v in r.get("headline", {}).items())
        lines.append(f"| {name} | {r['status']} | {format_duration(r['wall_s'])} | {r['peak_mb']:,.0f} MB | {figures} |")
    lines.append(f"| total | | {format_duration(summary['wall_s'])} | | |")
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``1 h 04 min``, ``21 min 05 s`` or ``5 s``."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"
