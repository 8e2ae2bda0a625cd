"""``kaleido tag``: tag every product of a catalog, safe to kill, sharded under torchrun.

The catalog is cut into fixed chunks (in catalog order). Chunk ``k`` goes to rank
``k % world_size``; each rank writes one Parquet part per chunk it finishes
(``OUT/parts/part-<k>.parquet``, written to a temporary name and renamed, so a part is
whole or absent). A killed job rerun with the same command skips the parts that exist;
features already computed are in the feature cache. When every rank is done, rank 0
merges the parts in chunk order into ``OUT/tags.parquet`` (and ``tags.csv`` on request),
checks that every product is there exactly once, and writes ``OUT/summary.json``.

On one process the same code runs without ``torch.distributed``; under ``torchrun`` the
process group is gloo on CPU and NCCL on GPUs (used only for the final barrier).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kaleido.data.catalog import Catalog
from kaleido.evaluation.metrics import classification_metrics
from kaleido.tagging.features import TagFeatureCache, features_for, ids_digest
from kaleido.tagging.tagger import INPUTS, Tagger
from kaleido.finetune.category import product_label

log = logging.getLogger(__name__)

JOB_NAME = "job.json"
TAGS_NAME = "tags.parquet"
SUMMARY_NAME = "summary.json"


@dataclass
class TagJobConfig:
    inputs: str = "auto"        # image | image+title | auto (image + title where there is a title)
    chunk: int = 256            # products per part (the unit of resume and of sharding)
    top_k: int = 3
    csv: bool = False           # also write tags.csv
    compute_missing: bool = True  # compute features of products not in the cache (from their images)

    def __post_init__(self):
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, not {self.inputs!r}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {self.chunk}")


def dist_info() -> tuple[int, int]:
    """(rank, world size), starting the process group under torchrun when needed."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        from datetime import timedelta

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # the only collective is the final barrier: a rank with little left waits for the others
        dist.init_process_group(backend, timeout=timedelta(hours=24))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rows_of_chunk(tagger: Tagger, catalog: Catalog, products, cache: TagFeatureCache, cfg: TagJobConfig,
                  split: dict | None = None) -> pd.DataFrame:
    """The output rows of one chunk of products (bad images get a row with the reason)."""
    # the backbone loads only when some product of the chunk is not in the cache
    extractor = tagger.extractor if cfg.compute_missing and any(p.id not in cache for p in products) else None
    rows = features_for(products, catalog, cache, extractor)
    by_id = {p.id: p for p in products}
    kept = [by_id[i] for i in rows.ids]
    tags = tagger.tag(rows, [p.title for p in kept], cfg.inputs,
                      catalog_labels=[{f: product_label(p, f) for f in tagger.fields} for p in kept],
                      top_k=cfg.top_k) if kept else []
    tags_by_id = {t.id: t for t in tags}
    records = []
    for p in products:
        rec = {"id": p.id, "title": p.title}
        if split is not None:
            rec["split"] = split.get(p.id, "")
        t = tags_by_id.get(p.id)
        rec["inputs"] = t.inputs if t else ""
        rec["caption"] = t.caption if t else ""
        rec["bad_image"] = rows.bad.get(p.id, "") if t is None else ""
        for f in tagger.fields:
            ft = t.fields[f] if t else None
            rec[f] = ft.label if ft else None
            rec[f"{f}_prob"] = ft.prob if ft else np.nan
            rec[f"{f}_top{cfg.top_k}"] = "; ".join(f"{n} {q:.3f}" for n, q in ft.top) if ft else ""
            rec[f"{f}_catalog"] = product_label(p, f)
        rec["low_confidence"] = bool(t and t.low_confidence_fields)
        rec["low_confidence_fields"] = ",".join(t.low_confidence_fields) if t else ""
        rec["disagrees_with_catalog"] = bool(t and t.disagreeing_fields)
        rec["disagreeing_fields"] = ",".join(t.disagreeing_fields) if t else ""
        rec["disagreement"] = max((t.fields[f].prob for f in t.disagreeing_fields), default=0.0) if t else 0.0
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _write_atomic(df: pd.DataFrame, path: Path, kind: str = "parquet") -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    if kind == "parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(path)


def _check_job(out: Path, job: dict, rank: int) -> None:
    """The same job (catalog, model, settings) or a clear refusal: parts of two different
    jobs must never be merged."""
    file = out / JOB_NAME
    if file.is_file():
        have = json.loads(file.read_text())
        diff = [k for k in job if have.get(k) != job[k]]
        if diff:
            raise ValueError(f"{out} holds a tagging job with other {', '.join(diff)} "
                             f"({', '.join(f'{k}={have.get(k)!r}' for k in diff)}); use another --out")
    elif rank == 0:
        tmp = file.with_name(file.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(job, indent=2) + "\n")
        tmp.replace(file)


def run_tag_job(catalog: Catalog, model: str | Path, out: str | Path, cache: str | Path | None = None,
                cfg: TagJobConfig = TagJobConfig(), split: dict | None = None,
                on_part: Callable[[int], None] | None = None, tagger: Tagger | None = None) -> dict | None:
    """Tag ``catalog`` with the tagger ``model`` into ``out``.

    Args:
        catalog: the products.
        model: a tagger folder or released model name.
        out: the job folder (resumed when it holds parts of the same job).
        cache: the tag-feature cache (default ``OUT/features``); features of products not in
            it are computed from their images and added.
        cfg: inputs, chunking, outputs.
        split: optional ``{product id: split}``; the output gets a ``split`` column and the
            accuracy table is given per split.
        on_part: called with each chunk index after its part is written (tests kill here).
        tagger: an already loaded tagger (else loaded from ``model``).

    Returns:
        The summary (rank 0), None on the other ranks.
    """
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    rank, world = dist_info()
    tagger = tagger or Tagger.from_pretrained(model)
    products = list(catalog)
    ids = [p.id for p in products]
    job = {"model": str(model), "model_fields": tagger.fields, "products": len(products),
           "catalog_ids": ids_digest(ids), "inputs": cfg.inputs, "chunk": cfg.chunk, "top_k": cfg.top_k,
           "compute_missing": cfg.compute_missing,
           "split": ids_digest(sorted(f"{k}={v}" for k, v in split.items())) if split else ""}
    _check_job(out, job, rank)
    feature_cache = TagFeatureCache(cache or out / "features", tagger.feature_cfg)
    chunks = [products[i:i + cfg.chunk] for i in range(0, len(products), cfg.chunk)]
    mine = [k for k in range(len(chunks)) if k % world == rank]
    todo = [k for k in mine if not (out / "parts" / f"part-{k:05d}.parquet").is_file()]
    start, done_now = time.perf_counter(), 0
    with tqdm(total=sum(len(chunks[k]) for k in mine), desc=f"tagging (rank {rank})" if world > 1 else "tagging",
              unit="product", disable=rank != 0 and world > 1) as bar:
        bar.update(sum(len(chunks[k]) for k in mine if k not in todo))
        for k in todo:
            df = rows_of_chunk(tagger, catalog, chunks[k], feature_cache, cfg, split)
            _write_atomic(df, out / "parts" / f"part-{k:05d}.parquet")
            done_now += len(chunks[k])
            bar.update(len(chunks[k]))
            if on_part is not None:
                on_part(k)
    seconds = time.perf_counter() - start
    _write_atomic(pd.DataFrame([{"rank": rank, "products": done_now, "seconds": seconds}]),
                  out / "parts" / f"timing-rank{rank}.parquet")
    _barrier()
    if rank != 0:
        return None
    return merge_parts(out, len(chunks), ids, tagger.fields, cfg, world)


def merge_parts(out: Path, n_chunks: int, ids: list[str], fields: list[str], cfg: TagJobConfig,
                world: int = 1) -> dict:
    """Join the parts into ``tags.parquet``, check exactly-once, write the summary."""
    missing = [k for k in range(n_chunks) if not (out / "parts" / f"part-{k:05d}.parquet").is_file()]
    if missing:
        raise RuntimeError(f"{out}: parts {missing[:5]}{'...' if len(missing) > 5 else ''} are missing; "
                           "rerun the same command to finish them")
    df = pd.concat([pd.read_parquet(out / "parts" / f"part-{k:05d}.parquet") for k in range(n_chunks)],
                   ignore_index=True)
    got = df["id"].astype(str).tolist()
    if got != ids:
        dup = [i for i, c in Counter(got).items() if c > 1]
        lost = sorted(set(ids) - set(got))
        raise RuntimeError(f"{out}: the parts do not hold every product exactly once "
                           f"({len(dup)} duplicated, {len(lost)} missing, e.g. {(dup + lost)[:3]})")
    _write_atomic(df, out / TAGS_NAME)
    if cfg.csv:
        _write_atomic(df, out / "tags.csv", kind="csv")
    timing = pd.concat([pd.read_parquet(out / "parts" / f"timing-rank{r}.parquet") for r in range(world)])
    summary = summarise(df, fields, timing)
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarise(df: pd.DataFrame, fields: list[str], timing: pd.DataFrame | None = None) -> dict:
    """Products tagged / skipped (by reason) / flagged, throughput, per-field accuracy against
    the catalog's labels (per split when the table has one)."""
    bad = df["bad_image"].fillna("") != ""
    reasons = Counter(r.split(":")[0] for r in df.loc[bad, "bad_image"])
    summary = {"fields": list(fields), "products": int(len(df)), "tagged": int((~bad).sum()), "skipped": int(bad.sum()),
               "skipped_reasons": dict(reasons),
               "skipped_examples": df.loc[bad, ["id", "bad_image"]].head(10).to_dict("records"),
               "low_confidence": int(df["low_confidence"].sum()),
               "disagrees_with_catalog": int(df["disagrees_with_catalog"].sum()),
               "low_confidence_by_field": {f: int(df["low_confidence_fields"].str.split(",").apply(lambda x, f=f: f in x).sum())
                                           for f in fields},
               "disagrees_by_field": {f: int(df["disagreeing_fields"].str.split(",").apply(lambda x, f=f: f in x).sum())
                                      for f in fields},
               "inputs": df.loc[~bad, "inputs"].value_counts().to_dict()}
    if timing is not None and len(timing):
        n, wall = int(timing["products"].sum()), float(timing["seconds"].max())
        summary["this_run"] = {"products": n, "seconds": wall, "products_per_s": n / wall if wall > 0 else None,
                               "ranks": int(len(timing))}
    groups = {"all": df[~bad]}
    if "split" in df:
        for s in sorted(set(df["split"]) - {""}):
            groups[s] = df[~bad & (df["split"] == s)]
    summary["accuracy"] = {}
    for name, g in groups.items():
        table = {}
        for f in fields:
            has = g[f"{f}_catalog"].fillna("") != ""
            if has.any():
                m = classification_metrics(g.loc[has, f"{f}_catalog"].tolist(), g.loc[has, f].tolist())
                table[f] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
        summary["accuracy"][name] = table
    return summary


def format_summary(summary: dict) -> str:
    """The summary as text: counts, then one accuracy row per field and group."""
    lines = [f"products {summary['products']}: tagged {summary['tagged']}, skipped {summary['skipped']}"
             + (f" ({', '.join(f'{k}: {v}' for k, v in summary['skipped_reasons'].items())})"
                if summary["skipped"] else ""),
             f"flagged: low_confidence {summary['low_confidence']}, "
             f"disagrees_with_catalog {summary['disagrees_with_catalog']}"]
    if "this_run" in summary:
        r = summary["this_run"]
        if r["products"]:
            lines.append(f"this run: {r['products']} products in {r['seconds']:.1f} s "
                         f"({r['products_per_s']:.1f} products/s, {r['ranks']} process(es))")
        else:
            lines.append("this run: nothing left to tag (every part was already there)")
    groups = list(summary["accuracy"])
    fields = [f for f in summary["fields"] if any(f in summary["accuracy"][g] for g in groups)]
    if fields:
        lines.append("")
        lines.append("accuracy / macro-F1 against the catalog's labels (%)")
        lines.append("| field | " + " | ".join(groups) + " |")
        lines.append("|---|" + "---|" * len(groups))
        for f in fields:
            cells = []
            for g in groups:
                m = summary["accuracy"][g].get(f)
                cells.append(f"{100 * m['accuracy']:.1f} / {100 * m['macro_f1']:.1f}" if m else "-")
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
