"""Run this same command in N local worker processes, each with its share of the cores.

A sharded job (``build_cache`` reads ``RANK`` / ``WORLD_SIZE`` as torchrun sets them) runs
faster as N single-threaded processes than as one process with N threads when its
networks scale poorly over threads: EfficientNet-Lite0 at 384 px runs 18.6 views/s on
one core and 20.9 on two (``benchmarks/kpg.py``). ``--workers N`` on the command line, or
``torchrun --standalone --nproc-per-node N -m kaleido.cli ...``, which does the same.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import torch

#: Set in a worker's environment; a worker never launches workers of its own.
WORKER_ENV = "KALEIDO_WORKER"


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn`` of a child process: it gets SIGKILL when its parent dies (a ``kill -9``
    of the parent must not leave it running, writing into a folder a rerun resumes)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1" or "RANK" in os.environ


def run_workers(argv: list[str], workers: int, threads: int | None = None) -> int:
    """Run ``python -m kaleido.cli ARGV`` as ``workers`` processes (ranks 0..N-1) and wait.

    Args:
        argv: the command line after ``kaleido``.
        workers: how many processes.
        threads: torch / onnxruntime threads per worker (default: this process's threads / N,
            at least 1).

    Returns:
        0 when every worker succeeded, else the first failing worker's exit status; the
        others are stopped when one fails.
    """
    threads = threads or max(1, torch.get_num_threads() // workers)
    procs = []
    for rank in range(workers):
        env = {**os.environ, WORKER_ENV: "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(workers), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "kaleido.cli", *argv], env=env,
                                      preexec_fn=die_with_parent if os.name == "posix" else None))
    print(f"{workers} workers x {threads} thread(s): ranks 0..{workers - 1}", flush=True)
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed:
                status = failed[0]
                break
            time.sleep(0.5)
        status = status or next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    return status
