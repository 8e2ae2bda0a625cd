"""The aligned first stage that Kaleido-BERT's fusion stands on (ALBEF's "align before fuse").

A contrastive model that embeds images and texts separately, a dual encoder (`kaleido dual
train`) or the linear reference (`kaleido baseline linear-probe`), does two jobs for the
single-stream matcher:

- it **mines the hard negatives** of ITM fine-tuning: each product's most similar other
  products, never one with the same title (:meth:`FirstStage.pool`), sampled in proportion
  to the softmax of the first stage's logits;
- it **recalls the candidates** that ITM re-orders at evaluation and search time, and its
  logit is **fused** with ITM's log-odds there (``kaleido eval ... dual=PATH fusion_weights=[...]``).

:func:`load_first_stage` reads either kind of folder; both become the same
:class:`FirstStage`: unit image and text embeddings of a list of products and the inverse
temperature the model was trained with, so ``score`` is a logit on the InfoNCE scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kaleido.evaluation.kb101 import title_codes


def pair_dot(image: np.ndarray, text: np.ndarray, images, texts, block: int = 1 << 16) -> np.ndarray:
    """``image[images[k]] . text[texts[k]]`` for index arrays of any (same) shape, float32,
    gathered ``block`` pairs at a time (memory O(block x E), never all pairs' rows at once)."""
    images, texts = np.asarray(images), np.asarray(texts)
    i, t = images.ravel(), texts.ravel()
    out = np.empty(len(i), dtype=np.float32)
    for s in range(0, len(i), block):
        out[s:s + block] = np.einsum("ij,ij->i", image[i[s:s + block]], text[t[s:s + block]])
    return out.reshape(images.shape)


@dataclass
class FirstStage:
    """Embeddings of N products from an aligned contrastive model.

    Attributes:
        image: (N, E) unit image embeddings, row ``i`` for product ``i``.
        text: (N, E) unit text (title) embeddings.
        scale: the model's inverse temperature: ``score`` = ``scale`` x cosine.
        source: the folder the model came from.
    """

    image: np.ndarray
    text: np.ndarray
    scale: float
    source: str = ""

    def __len__(self) -> int:
        return len(self.image)

    def score(self, images, texts) -> np.ndarray:
        """Logits ``scale * cos(image_i, text_j)`` of product-index arrays (any shape)."""
        return self.scale * pair_dot(self.image, self.text, images, texts)

    def pool(self, size: int, titles: Sequence[str], direction: str = "texts",
             chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Each product's ``size`` most similar other products, as ITM negatives.

        Args:
            size: candidates kept per product (capped at the products left after exclusions).
            titles: the products' titles; the product itself and every same-title product are
                never candidates (a same-title twin is not a wrong answer).
            direction: ``"texts"``: for image ``i``, the other products' texts; ``"images"``:
                for text ``i``, the other products' images.
            chunk: rows scored at a time (memory O(chunk x N), never N x N).

        Returns:
            ``(index, logits)``, both (N, size), ordered by decreasing logit; a row with fewer
            eligible products than ``size`` is padded with its last eligible one (logit -inf
            marks the padding; a row with none is padded with -1).
        """
        if direction not in ("texts", "images"):
            raise ValueError(f"direction must be texts or images, not {direction!r}")
        n = len(self)
        if len(titles) != n:
            raise ValueError(f"{len(titles)} titles for {n} products")
        groups = title_codes(list(titles))
        size = max(1, min(int(size), n - 1))
        query, other = (self.image, self.text) if direction == "texts" else (self.text, self.image)
        index = np.zeros((n, size), dtype=np.int64)
        logits = np.full((n, size), -np.inf, dtype=np.float32)
        for start in range(0, n, chunk):
            rows = np.arange(start, min(start + chunk, n))
            sim = self.scale * (query[rows] @ other.T)                        # (rows, N)
            sim[groups[rows][:, None] == groups[None, :]] = -np.inf           # itself and its twins
            top = np.argpartition(-sim, size - 1, axis=1)[:, :size]
            top_sim = np.take_along_axis(sim, top, 1)
            order = np.argsort(-top_sim, axis=1, kind="stable")
            index[rows], logits[rows] = np.take_along_axis(top, order, 1), np.take_along_axis(top_sim, order, 1)
        eligible = np.isfinite(logits)
        count = eligible.sum(1)
        last = np.where(count > 0, index[np.arange(n), np.maximum(count - 1, 0)], -1)
        index = np.where(eligible, index, last[:, None])          # never the product or its twin
        return index, logits


def is_first_stage(path: str | Path) -> bool:
    """Whether ``path`` is a dual-encoder ``final/`` folder or a linear-probe run."""
    path = Path(path)
    return (path / "dual_processor.json").is_file() or (path / "model").is_dir() and (path / "features").is_dir()


def load_first_stage(path: str | Path, products: Sequence, cache=None, device: str = "auto") -> FirstStage:
    """The first stage of ``products`` from a dual-encoder folder or a linear-probe run.

    Args:
        path: a ``kaleido dual train`` ``RUN/final`` folder (it needs ``cache``: the products'
            patch features, with whole-image features for a ``whole_image`` tower) or a
            ``kaleido baseline linear-probe`` run (its stored whole-image features must hold
            every product).
        products: the products, in the caller's order.
        cache: their :class:`~kaleido.patches.cache.FeatureCache` (dual encoder only).
        device: where the dual encoder runs.
    """
    path = Path(path)
    if (path / "dual_processor.json").is_file():
        if cache is None:
            raise ValueError(f"{path} is a dual encoder; it needs the products' feature cache")
        from kaleido.dual.evaluate import DualScores

        dual = DualScores(path, products, cache, device=device)
        return FirstStage(dual.image, dual.text, dual.scale, str(path))
    if (path / "model").is_dir() and (path / "features").is_dir():
        from kaleido.baselines.linear_probe import ProbePrior

        probe = ProbePrior(path, products)
        return FirstStage(probe.image, probe.text, probe.scale, str(path))
    raise FileNotFoundError(f"{path}: neither a dual encoder (`kaleido dual train` RUN/final, with "
                            "dual_processor.json) nor a linear-probe run (`kaleido baseline linear-probe`, "
                            "with model/ and features/)")
