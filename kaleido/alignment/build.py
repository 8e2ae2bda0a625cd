"""Run SAT over a catalog and write every product's pre-alignments beside the feature cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..data import Catalog, ImageLoadError
from ..patches.cache import FeatureCache
from ..tokenizer import load_tokenizer
from .generator import AlignmentConfig, align_product
from .store import AlignmentWriter

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    products: int = 0
    already_done: int = 0
    with_pairs: int = 0
    pairs: int = 0
    skipped: list = field(default_factory=list)

    def summary(self) -> str:
        share = self.with_pairs / self.products if self.products else 0.0
        return (f"{self.products:,} products aligned ({self.already_done:,} already done), "
                f"{share:.1%} with at least one pair, {self.pairs:,} pairs; "
                f"{len(self.skipped)} skipped")


def build_alignments(catalog: Catalog, cache: FeatureCache, captioner, out: str | Path,
                     cfg: AlignmentConfig = AlignmentConfig(), *, batch_size: int = 16,
                     progress: bool = True) -> BuildReport:
    """Caption every product of ``catalog`` that is in ``cache`` and store its alignments.

    Args:
        catalog: products (their text is aligned).
        cache: their patch positions.
        captioner: a :class:`sat_captioner.Captioner`.
        out: the JSONL file (or folder) to append to; products already there are skipped.
        cfg: alignment settings.
        batch_size: images captioned together.
        progress: show a progress bar.
    """
    tokenizer = load_tokenizer(cfg.tokenizer)
    grids = cache.meta["grids"]
    report = BuildReport()
    with AlignmentWriter(out) as writer:
        todo = [p for p in catalog if p.id in cache and p.id not in writer.done]
        report.already_done = sum(1 for p in catalog if p.id in writer.done)
        bar = tqdm(total=len(todo), desc="align", unit="product", disable=not progress)
        for start in range(0, len(todo), batch_size):
            products, images = [], []
            for product in todo[start:start + batch_size]:
                try:
                    images.append(catalog.load_image(product))
                    products.append(product)
                except ImageLoadError as err:
                    report.skipped.append({"id": product.id, "error": str(err)})
                    log.warning("skipped product %s: %s", product.id, err)
            results = captioner.caption(images, beam_size=cfg.beam_size) if images else []
            for product, result in zip(products, results):
                pairs = align_product(result.words, result.attention.numpy(), product.text,
                                      cache[product.id].positions, grids, tokenizer, cfg)
                writer.write(product.id, result.text, pairs)
                report.products += 1
                report.with_pairs += bool(pairs)
                report.pairs += len(pairs)
            writer.flush()
            bar.update(len(todo[start:start + batch_size]))
        bar.close()
    return report
