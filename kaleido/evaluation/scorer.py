"""Match scores of (image product, text product) pairs for retrieval evaluation, fast on CPU.

A single-stream model needs one forward pass per pair, so a retrieval protocol costs one
pass per pair it ranks. :class:`PairScorer` gathers every pair a protocol needs, scores
each distinct pair once and answers from a lookup table. Its forward pass gives the match
log-odds of ``RetrievalTask.score`` (to float rounding) for less work:

- the patch embeddings (FC(feature) + FC(position) + level, LayerNorm) do not depend on
  the text, so they are computed once per image product instead of once per pair;
- pairs are scored in order of title length, so a batch pads its titles little;
- the ITM head reads only the pooled [CLS] (``pooling="cls"``), so the last layer computes
  the [CLS] position alone (its attention still reads every key and value);
- batches of 64 pairs on CPU: with 1 thread 32-64 ran fastest, with 2 threads 64-128
  (bigger batches spill the activations out of cache, smaller ones leave threads waiting);
- optionally (``quantize=True``, CPU only) the Linear layers of a copy of the model run
  with int8 dynamic quantisation (weights per output channel, activations per batch); the
  caller's model is left as it was.

A task whose ``score`` is not ``RetrievalTask``'s own over a ``KaleidoBertModel`` (a
subclass that overrides it, a stand-in in tests) is scored the generic way: batches from
``pairs.batch`` through ``task.score``, still in order of title length where ``pairs`` has
tokenised titles. ``benchmarks/score_pairs.py`` times the scorer against the previous one,
which ran ``RetrievalTask.score`` on every pair in the order of the pair keys.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kaleido.finetune.pairs import PairInputs
from kaleido.finetune.retrieval import RetrievalTask
from kaleido.model.modeling import KaleidoBertModel, KaleidoBertOutput, masked_mean

CPU_BATCH_SIZE = 64
GPU_BATCH_SIZE = 128  # the previous default (not re-measured on a GPU)
IMAGE_BLOCK = 2048   # image products whose patch embeddings are held at once (minilm: 84 KB each)
EMBED_BATCH = 64     # image products per patch-embedding pass


class PairScorer:
    """Match scores of (image product, text product) pairs; each distinct pair scored once.

    Args:
        task: the retrieval model; put in eval mode and moved to ``device``.
        pairs: the products' patch features and tokenised titles.
        batch_size: pairs per forward pass (0: 64 on CPU, 128 on a GPU).
        device: where to score (default: CPU).
        quantize: score with an int8 dynamically quantised copy of ``task`` (CPU only): ranks
            stay close to fp32's; scores move slightly, and a little with the pairs that
            share a batch (activations are quantised per batch).
        sort_by_length: score the pairs in order of title length (less padding); the scores
            do not depend on it.
    """

    def __init__(self, task: RetrievalTask, pairs: PairInputs, batch_size: int = 0,
                 device: torch.device | str | None = None, *, quantize: bool = False,
                 sort_by_length: bool = True):
        self.device = torch.device(device or "cpu")
        if quantize and self.device.type != "cpu":
            raise ValueError(f"int8 scoring (quantize=true) runs on CPU only, not on {self.device}; "
                             "set device=cpu or quantize=false")
        self.task, self.pairs = task, pairs
        self.batch_size = batch_size or (CPU_BATCH_SIZE if self.device.type == "cpu" else GPU_BATCH_SIZE)
        self.quantize, self.sort_by_length = quantize, sort_by_length
        self.n = len(pairs)
        self._fast = has_fast_path(task)
        texts = getattr(pairs, "text_ids", None)
        self._lengths = None if texts is None else np.array([len(ids) for ids in texts])
        self._int8: RetrievalTask | None = None
        self._keys = np.zeros(0, dtype=np.int64)
        self._scores = np.zeros(0, dtype=np.float32)

    @property
    def scored(self) -> int:
        return len(self._keys)

    def prepare(self, images: np.ndarray, texts: np.ndarray, desc: str = "scoring") -> None:
        """Score every pair not scored yet (one progress bar over all of them)."""
        keys = np.unique(np.asarray(images, dtype=np.int64) * self.n + np.asarray(texts, dtype=np.int64))
        todo = np.setdiff1d(keys, self._keys, assume_unique=True)   # sorted: image-major
        if not len(todo):
            return
        task = self._scoring_task()
        with torch.inference_mode(), tqdm(total=len(todo), desc=desc, unit="pair") as bar:
            out = self._score_fast(task, todo, bar) if self._fast else self._score_generic(task, todo, bar)
        keys = np.concatenate([self._keys, todo])
        order = np.argsort(keys)
        self._keys, self._scores = keys[order], np.concatenate([self._scores, out])[order]

    def score(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        """Scores of the pairs ``(images[k], texts[k])``, same shape as the inputs."""
        images, texts = np.asarray(images), np.asarray(texts)
        self.prepare(images.ravel(), texts.ravel())
        keys = images.astype(np.int64) * self.n + texts.astype(np.int64)
        return self._scores[np.searchsorted(self._keys, keys)]

    def score_transient(self, images: np.ndarray, texts: np.ndarray, desc: str = "scoring") -> np.ndarray:
        """Scores of the pairs ``(images[k], texts[k])`` without keeping them: pairs already
        scored are looked up, new ones are scored and then forgotten. Memory stays that of
        one call (the full-catalog ranks call it chunk by chunk: never N x N kept)."""
        images, texts = np.asarray(images), np.asarray(texts)
        keys = images.astype(np.int64) * self.n + texts.astype(np.int64)
        unique, inverse = np.unique(keys.ravel(), return_inverse=True)
        out = np.empty(len(unique), dtype=np.float32)
        pos = np.minimum(np.searchsorted(self._keys, unique), max(len(self._keys) - 1, 0))
        known = (self._keys[pos] == unique) if len(self._keys) else np.zeros(len(unique), dtype=bool)
        out[known] = self._scores[pos[known]]
        todo = unique[~known]
        if len(todo):
            task = self._scoring_task()
            with torch.inference_mode(), tqdm(total=len(todo), desc=desc, unit="pair") as bar:
                out[~known] = (self._score_fast(task, todo, bar) if self._fast
                               else self._score_generic(task, todo, bar))
        return out[inverse.reshape(-1)].reshape(keys.shape)

    # ------------------------------------------------------------------ internals
    def _scoring_task(self) -> RetrievalTask:
        self.task.eval().to(self.device)
        if not self.quantize:
            return self.task
        if self._int8 is None:
            self._int8 = quantize_int8(self.task)
        return self._int8

    def _order(self, keys: np.ndarray) -> np.ndarray:
        """The order to score the pairs ``keys`` in: by title length (stable), or as they come."""
        if self.sort_by_length and self._lengths is not None:
            return np.argsort(self._lengths[keys % self.n], kind="stable")
        return np.arange(len(keys))

    def _score_generic(self, task, keys: np.ndarray, bar) -> np.ndarray:
        """Scores of the pairs ``keys`` by ``task.score`` on ``pairs.batch`` batches."""
        order, out = self._order(keys), np.empty(len(keys), dtype=np.float32)
        for start in range(0, len(keys), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = self.pairs.batch(keys[chunk] // self.n, keys[chunk] % self.n)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out[chunk] = task.score(batch).float().cpu().numpy()
            bar.update(len(chunk))
        return out

    def _patch_embeds(self, images: np.ndarray) -> torch.Tensor:
        """(I, P, H) patch embeddings of image products ``images``, by the fp32 model."""
        out = []
        for start in range(0, len(images), EMBED_BATCH):
            feats = [self.pairs.patches(int(i)) for i in images[start:start + EMBED_BATCH]]
            features = torch.from_numpy(np.stack([f for f, _ in feats]).astype(np.float32, copy=False))
            positions = torch.from_numpy(np.stack([p for _, p in feats]).astype(np.float32, copy=False))
            out.append(self.task.model.patch_embeddings(features.to(self.device), positions.to(self.device)))
        return torch.cat(out)

    def _score_fast(self, task: RetrievalTask, keys: np.ndarray, bar) -> np.ndarray:
        """Scores of the pairs ``keys`` (sorted: image-major), a block of image products at a time."""
        out = np.empty(len(keys), dtype=np.float32)
        image_of = keys // self.n
        images = np.unique(image_of)
        for b in range(0, len(images), IMAGE_BLOCK):
            block = images[b:b + IMAGE_BLOCK]
            lo, hi = np.searchsorted(image_of, [block[0], block[-1] + 1])
            out[lo:hi] = self._score_block(task, block, keys[lo:hi], bar)
        return out

    def _score_block(self, task: RetrievalTask, block: np.ndarray, keys: np.ndarray, bar) -> np.ndarray:
        """Scores of the pairs ``keys`` (sorted), whose image products are all in ``block``."""
        embeds = self._patch_embeds(block)                              # (I, P, H)
        rows = torch.from_numpy(np.searchsorted(block, keys // self.n))  # pair -> row of embeds
        texts, order = keys % self.n, self._order(keys)
        out = np.empty(len(keys), dtype=np.float32)
        for start in range(0, len(keys), self.batch_size):
            chunk = order[start:start + self.batch_size]
            text = self.pairs.processor.pad_text([self.pairs.text_ids[j] for j in texts[chunk]])
            scores = match_logodds(task, text["input_ids"].to(self.device),
                                   text["attention_mask"].to(self.device), embeds[rows[chunk]])
            out[chunk] = scores.float().cpu().numpy()
            bar.update(len(chunk))
        return out


def has_fast_path(task) -> bool:
    """Whether ``task`` scores pairs by ``RetrievalTask``'s own ITM log-odds over a
    ``KaleidoBertModel``, which :func:`match_logodds` reproduces."""
    return (isinstance(task, RetrievalTask) and type(task).score is RetrievalTask.score
            and isinstance(task.model, KaleidoBertModel) and task.model.config.architecture == "single_stream")


def quantize_int8(task: RetrievalTask) -> RetrievalTask:
    """A CPU copy of ``task`` whose Linear layers run int8 dynamic quantisation (fbgemm / x86)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    frozen = copy.deepcopy(task).cpu().eval()
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.filterwarnings("ignore", message=r"torch\.(ao\.quantization|quantize_per)")
        return quantize_dynamic(frozen, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def match_logodds(task: RetrievalTask, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  patch_embeds: torch.Tensor) -> torch.Tensor:
    """(B,) match log-odds of ``RetrievalTask.score`` from precomputed patch embeddings.

    The computation of ``KaleidoBertModel.forward`` (no segments, every patch real, no
    attention pattern) and the ITM head, except that with ``pooling="cls"`` the last layer
    runs for the [CLS] position only: the pooled [CLS] is all the head reads.

    Args:
        task: the retrieval model (fp32, or a copy from :func:`quantize_int8`), in eval mode.
        input_ids: (B, T) ``[CLS] title [SEP]`` ids, right-padded.
        attention_mask: (B, T) 1 for real tokens.
        patch_embeds: (B, P, H) outputs of ``task.model.patch_embeddings``.
    """
    model = task.model
    x = torch.cat([model.embeddings(input_ids), patch_embeds], dim=1)  # (B, T+P, H)
    keys = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, T+P)
    keys[:, :input_ids.shape[1]] = attention_mask.bool()
    additive = torch.zeros(keys.shape, dtype=x.dtype, device=x.device)
    additive = additive.masked_fill(~keys, torch.finfo(x.dtype).min)[:, None, None]  # (B, 1, 1, T+P)
    cls_only = model.config.pooling == "cls" and task.itm.interaction is None
    layers = model.encoder.layer
    for layer in layers[:-1] if cls_only else layers:
        x = layer(x, additive)                                         # transformers 5: a tensor
    if cls_only:
        x = _cls_layer(layers[-1], x, additive)                       # (B, 1, H)
        pooled = model.pooler(x)
    else:
        pooled = model.pooler(x) if model.config.pooling == "cls" else masked_mean(x, keys)
    # with cls pooling the hidden states are the [CLS] one alone: the ITM head reads only ``pooled``
    out = KaleidoBertOutput(last_hidden_state=x, pooled=pooled, text_length=input_ids.shape[1], keys=keys)
    logits = task.itm.logits(out).float()
    return logits[:, 1] - logits[:, 0]


def _cls_layer(layer: nn.Module, hidden: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
    """A transformers ``BertLayer`` in eval mode, for the first position only: (B, 1, H)."""
    attn = layer.attention.self
    b = hidden.shape[0]
    heads, size = attn.num_attention_heads, attn.attention_head_size
    cls = hidden[:, :1].contiguous()                                   # (B, 1, H)

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, -1, heads, size).transpose(1, 2)               # (B, heads, L, size)

    ctx = F.scaled_dot_product_attention(split(attn.query(cls)), split(attn.key(hidden)),
                                         split(attn.value(hidden)), attn_mask=additive,
                                         scale=attn.scaling)            # (B, heads, 1, size)
    x = layer.attention.output(ctx.transpose(1, 2).reshape(b, 1, heads * size), cls)
    return layer.output(layer.intermediate(x), x)
