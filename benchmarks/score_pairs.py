"""Pair scorer benchmark: the previous per-pair scorer vs ``kaleido.evaluation.scorer.PairScorer``.

On one set of KB-101-shaped pairs (Q queries x 101 candidates, both directions: image q
with text c, and image c with text q), in one run: pairs/s of the previous scorer (kept
below as ``PreviousPairScorer``), of the new one in fp32 and with int8 dynamic
quantisation, their speed-ups over the previous one, the largest score difference of new
fp32 vs previous, and the R@1/5/10 (ITR, TIR) of int8 vs fp32 with their difference in points.

    python benchmarks/score_pairs.py [--queries 12] [--threads N] [--checkpoint FT/retrieval/final]
                                     [--catalog DIR] [--cache CACHE] [--ablations]

Inputs: by default seeded synthetic patch features of the model's shape (55 x 1280) under
the real titles of data/sample/products.csv; with ``--cache`` a real feature cache (of
``--catalog``'s products). The model is minilm in a ``RetrievalTask`` whose ITM head is
random, unless ``--checkpoint`` names a retrieval fine-tune (or a pre-training ``final/``):
the ranks of an untrained head are noise, so the int8 agreement means little without one.
Other jobs on the machine make the pairs/s noisy; the ratios come from one run in which
the scorers take turns on slices of the pairs (``--rounds``), so a change of load hits all.
``--ablations`` also times the previous algorithm with the batch size and ordering of the
new one, and the new one unsorted, to show what each change buys.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kaleido.data import load_catalog
from kaleido.evaluation import KB101Config, ranks_from_scores, recall_at_k, sample_kb101
from kaleido.evaluation.scorer import CPU_BATCH_SIZE, PairScorer, quantize_int8
from kaleido.finetune.pairs import PairInputs
from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask
from kaleido.model import KaleidoProcessor, create_model
from kaleido.patches.geometry import patch_boxes, patch_positions

REPO = Path(__file__).resolve().parents[1]


class PreviousPairScorer:
    """The scorer before ``kaleido.evaluation.scorer`` (the baseline, unchanged): every pair
    through ``RetrievalTask.score`` in pair-key order, patch features stacked per batch."""

    def __init__(self, task: RetrievalTask, pairs: PairInputs, batch_size: int = 128,
                 device: torch.device | None = None):
        self.task, self.pairs, self.batch_size = task, pairs, batch_size
        self.device = device or torch.device("cpu")
        self.n = len(pairs)
        self._keys = np.zeros(0, dtype=np.int64)
        self._scores = np.zeros(0, dtype=np.float32)

    @property
    def scored(self) -> int:
        return len(self._keys)

    def prepare(self, images: np.ndarray, texts: np.ndarray, desc: str = "scoring") -> None:
        keys = np.unique(np.asarray(images, dtype=np.int64) * self.n + np.asarray(texts, dtype=np.int64))
        todo = np.setdiff1d(keys, self._keys, assume_unique=True)
        if not len(todo):
            return
        out = np.empty(len(todo), dtype=np.float32)
        self.task.eval().to(self.device)
        with torch.no_grad():
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                batch = self.pairs.batch(chunk // self.n, chunk % self.n)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out[start:start + len(chunk)] = self.task.score(batch).cpu().numpy()
        keys = np.concatenate([self._keys, todo])
        order = np.argsort(keys)
        self._keys, self._scores = keys[order], np.concatenate([self._scores, out])[order]

    def score(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        images, texts = np.asarray(images), np.asarray(texts)
        self.prepare(images.ravel(), texts.ravel())
        keys = images.astype(np.int64) * self.n + texts.astype(np.int64)
        return self._scores[np.searchsorted(self._keys, keys)]


class SortedPreviousScorer(PreviousPairScorer):
    """Ablation: the previous algorithm under ``inference_mode``, pairs in title-length order."""

    def prepare(self, images, texts, desc: str = "scoring") -> None:
        keys = np.unique(np.asarray(images, dtype=np.int64) * self.n + np.asarray(texts, dtype=np.int64))
        todo = np.setdiff1d(keys, self._keys, assume_unique=True)
        lengths = np.array([len(self.pairs.text_ids[j]) for j in todo % self.n])
        out = np.empty(len(todo), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")
        self.task.eval()
        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                chunk = order[start:start + self.batch_size]
                out[chunk] = self.task.score(self.pairs.batch(todo[chunk] // self.n, todo[chunk] % self.n)).numpy()
        keys = np.concatenate([self._keys, todo])
        order = np.argsort(keys)
        self._keys, self._scores = keys[order], np.concatenate([self._scores, out])[order]


class SyntheticCache:
    """Stands in for a ``FeatureCache``: seeded non-negative features (like the backbone's
    activations) and the real 5-D positions of a 60 x 80 image's 55 patches."""

    def __init__(self, ids, feature_dim: int, grids, seed: int = 0):
        self.root, self.meta = "synthetic features", {"grids": list(grids)}
        rng = np.random.default_rng(seed)
        positions = patch_positions(patch_boxes(np.array([0, 0, 60, 80], np.float32), grids), (60, 80))
        n = sum(g * g for g in grids)
        self._items = {pid: type("Item", (), {
            "features": np.maximum(rng.normal(0.0, 1.0, (n, feature_dim)), 0).astype(np.float32),
            "positions": positions.astype(np.float32)}) for pid in ids}

    def __contains__(self, pid) -> bool:
        return pid in self._items

    def __getitem__(self, pid):
        return self._items[pid]


def build(args) -> tuple[RetrievalTask, PairInputs, str]:
    """The task, the pairs' inputs and a line saying what they are."""
    from kaleido.evaluation.evaluate import retrieval_task
    from kaleido.finetune.run import load_processor
    from kaleido.patches.cache import FeatureCache

    torch.manual_seed(args.seed)  # the random ITM head (and patch embeddings) of the default model
    catalog = load_catalog(args.catalog)
    cache = FeatureCache(args.cache) if args.cache else None
    if args.checkpoint:
        task = retrieval_task(args.checkpoint)
        what = f"checkpoint {args.checkpoint}"
    else:
        dim = cache.feature_dim if cache else 1280
        task = RetrievalTask(create_model("minilm", pretrained=True, feature_dim=dim), RetrievalConfig())
        what = "minilm with an UNTRAINED (random) ITM head"
    task.eval()
    cfg = task.model.config
    processor = (load_processor(args.checkpoint, 64, cfg.grids) if args.checkpoint
                 else KaleidoProcessor.default(64, grids=cfg.grids))
    if cache is None:
        cache = SyntheticCache([p.id for p in catalog], cfg.feature_dim, cfg.grids, args.seed)
    pairs = PairInputs(list(catalog), cache, processor)
    return task, pairs, f"{what}; {len(pairs)} products of {args.catalog}, features: {cache.root}"


def kb101_pairs(pairs: PairInputs, queries: int, seed: int):
    """One KB-101 draw and the (images, texts) of its ITR then TIR pairs."""
    products = pairs.products
    draw = sample_kb101([p.subcategory or "" for p in products], [p.category or "" for p in products],
                        KB101Config(queries=queries, draws=1, seed=seed))[0]
    q = np.repeat(draw.queries[:, None], draw.candidates.shape[1], 1)   # (Q, 101)
    images = np.concatenate([q.ravel(), draw.candidates.ravel()])
    texts = np.concatenate([draw.candidates.ravel(), q.ravel()])
    return draw, q, images, texts


def interleaved(scorers: dict, images, texts, rounds: int, warmup: int, seed: int) -> dict[str, dict]:
    """Wall-clock and CPU pairs/s of each scorer, timed in turns on the same slices of the
    pairs (shuffled, seeded) so that a change of load on the machine hits every scorer
    alike; ``warmup`` other pairs are scored first, untimed (the int8 copy is built then).
    Pairs per CPU-second (all threads) count the work done, whatever else runs; with
    more than one thread they also count the threads' waits for each other."""
    order = np.random.default_rng(seed).permutation(len(images))
    images, texts = images[order], texts[order]
    for scorer in scorers.values():
        scorer.prepare(images[:warmup], texts[:warmup], desc="warm-up")
    done = {name: scorer.scored for name, scorer in scorers.items()}
    wall, cpu = dict.fromkeys(scorers, 0.0), dict.fromkeys(scorers, 0.0)
    for part in np.array_split(np.arange(warmup, len(images)), rounds):
        for name, scorer in scorers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            scorer.prepare(images[part], texts[part], desc=name)
            wall[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    return {name: {"wall": (scorer.scored - done[name]) / wall[name],
                   "cpu": (scorer.scored - done[name]) / cpu[name]} for name, scorer in scorers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(REPO / "data" / "sample"))
    parser.add_argument("--cache", default=None, help="a feature cache of --catalog (default: synthetic)")
    parser.add_argument("--checkpoint", default=None, help="a retrieval fine-tune (or pre-training final/)")
    parser.add_argument("--queries", type=int, default=12, help="KB-101 queries (x 101 candidates x 2 ways)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=0, help="new scorer's pairs per pass (0: its default)")
    parser.add_argument("--previous-batch-size", type=int, default=128, help="the previous default")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--rounds", type=int, default=6, help="turns the scorers take on slices of the pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_score_pairs"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    task, pairs, what = build(args)
    draw, q, images, texts = kb101_pairs(pairs, args.queries, args.seed)
    n_pairs = len(np.unique(images * len(pairs) + texts))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quantized engine "
          f"{torch.backends.quantized.engine}")
    print(f"{what}\n{len(draw.queries)} queries x {draw.candidates.shape[1]} candidates x 2 directions: "
          f"{n_pairs} distinct pairs")
    start = time.perf_counter()
    quantize_int8(task)
    print(f"int8 copy of the model built in {time.perf_counter() - start:.1f} s (once per evaluation)")

    scorers = {f"previous (batch {args.previous_batch_size}, key order)":
               PreviousPairScorer(task, pairs, args.previous_batch_size)}
    if args.ablations:
        bs = args.batch_size or CPU_BATCH_SIZE
        scorers.update({f"previous, batch {bs}": PreviousPairScorer(task, pairs, bs),
                        f"previous, batch {bs}, sorted, inference_mode": SortedPreviousScorer(task, pairs, bs),
                        "new fp32, unsorted": PairScorer(task, pairs, args.batch_size, sort_by_length=False)})
    new = PairScorer(task, pairs, args.batch_size)
    new8 = PairScorer(task, pairs, args.batch_size, quantize=True)
    scorers.update({f"new fp32 (batch {new.batch_size})": new, f"new int8 (batch {new8.batch_size})": new8})
    speed = interleaved(scorers, images, texts, args.rounds, warmup=64, seed=args.seed)

    base = next(iter(speed.values()))
    print(f"\n{'scorer':<46}{'pairs/s':>9}{'x previous':>12}{'pairs/CPU-s':>13}{'x previous':>12}")
    for name, v in speed.items():
        print(f"{name:<46}{v['wall']:>9.1f}{v['wall'] / base['wall']:>11.2f}x"
              f"{v['cpu']:>13.1f}{v['cpu'] / base['cpu']:>11.2f}x")

    previous = next(iter(scorers.values()))
    diff = float(np.abs(new.score(images, texts) - previous.score(images, texts)).max())
    print(f"\nmax |new fp32 - previous| over {n_pairs} pairs: {diff:.2e}")
    ranks = {}  # 1-based rank of each query's positive among its 101 candidates
    for name, scorer in (("fp32", new), ("int8", new8)):
        ranks[name] = {"ITR": ranks_from_scores(scorer.score(q, draw.candidates)),
                       "TIR": ranks_from_scores(scorer.score(draw.candidates, q))}
    fp32, int8 = ({d: recall_at_k(r) for d, r in ranks[name].items()} for name in ("fp32", "int8"))
    moved = {d: float(np.mean(ranks["fp32"][d] != ranks["int8"][d])) for d in ("ITR", "TIR")}
    s32, s8 = new.score(images, texts), new8.score(images, texts)
    caveat = "" if args.checkpoint else "  (UNTRAINED ITM head: ranks are noise; pass --checkpoint)"
    print(f"int8 vs fp32: max |score diff| {np.abs(s8 - s32).max():.3g} (fp32 scores: std {s32.std():.3g}, "
          f"range {s32.min():.3g}..{s32.max():.3g}); Pearson r {np.corrcoef(s32, s8)[0, 1]:.5f}{caveat}")
    print(f"{'':<6}{'R@1 fp32':>10}{'int8':>7}{'diff':>7}{'R@5 fp32':>10}{'int8':>7}{'diff':>7}"
          f"{'R@10 fp32':>11}{'int8':>7}{'diff':>7}{'rank moved':>12}   (points; 1 query = "
          f"{100 / len(draw.queries):.1f})")
    for d in ("ITR", "TIR"):
        cells = "".join(f"{100 * fp32[d][k]:>{10 if k != 'R@10' else 11}.1f}{100 * int8[d][k]:>7.1f}"
                        f"{100 * (int8[d][k] - fp32[d][k]):>+7.1f}" for k in ("R@1", "R@5", "R@10"))
        print(f"{d:<6}{cells}{100 * moved[d]:>11.1f}%")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"inputs": what, "threads": torch.get_num_threads(), "pairs": n_pairs,
              "pairs_per_s": {k: round(v["wall"], 2) for k, v in speed.items()},
              "pairs_per_cpu_s": {k: round(v["cpu"], 2) for k, v in speed.items()},
              "speedup": {k: round(v["wall"] / base["wall"], 2) for k, v in speed.items()},
              "speedup_cpu": {k: round(v["cpu"] / base["cpu"], 2) for k, v in speed.items()},
              "max_abs_diff_new_fp32_vs_previous": diff, "max_abs_diff_int8_vs_fp32": float(np.abs(s8 - s32).max()),
              "recall_fp32": fp32, "recall_int8": int8, "rank_moved_int8": moved,
              "trained_head": bool(args.checkpoint)}
    (args.out / "score_pairs.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'score_pairs.json'}")


if __name__ == "__main__":
    main()
