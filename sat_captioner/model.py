"""Show, Attend and Tell (Xu et al., ICML 2015): soft-attention LSTM captioner.

The encoder is a frozen CNN whose last feature map is read as a grid of annotation
vectors ``a_i`` (L = h * w of them, C channels each); :func:`encode` computes it. Since
it is frozen, training precomputes the grid once and only the :class:`SATDecoder`
learns, which is what makes CPU training feasible.

The decoder follows the paper: soft (Bahdanau MLP) attention over the grid, a gating
scalar ``beta_t = sigmoid(f_beta(h_{t-1}))`` on the context, an LSTM whose initial
state is predicted from the mean annotation, the deep output layer of eq. 7
(``L_o(E y_{t-1} + L_h h_t + L_z z_t)``) and the doubly stochastic attention penalty
``alpha_c * sum_i (1 - sum_t alpha_ti)^2`` (averaged here, as in the common reference
implementations, so its scale does not depend on the grid size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from kaleido.patches.backbone import Backbone, BackboneConfig

# Token ids fixed by sat_captioner.vocab.SPECIALS.
PAD_ID, START_ID, END_ID = 0, 1, 2


@dataclass
class SATConfig:
    """The captioner's architecture.

    Attributes:
        backbone: the frozen encoder CNN (its last feature map is the attention grid).
        encoder_input_size: images (or saliency-box crops) are resized to this square
            size before the backbone; the grid is ``size / stride`` cells a side
            (320 -> 10 x 10 with a stride-32 backbone).
        embed_dim: word embedding size (also the deep-output layer's width).
        hidden_dim: LSTM hidden and cell size.
        attention_dim: hidden size of the attention MLP.
        dropout: dropout before the output layer.
        alpha_c: weight of the doubly stochastic attention penalty (0 turns it off).
        max_len: longest caption in words (longer titles are truncated in training;
            decoding stops after this many words).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder_input_size: int = 320
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 256
    dropout: float = 0.3
    alpha_c: float = 1.0
    max_len: int = 20

    def __post_init__(self) -> None:
        for name in ("encoder_input_size", "embed_dim", "hidden_dim", "attention_dim", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"SATConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"SATConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.alpha_c < 0:
            raise ValueError(f"SATConfig.alpha_c must be >= 0, got {self.alpha_c}")


@dataclass
class SATOutput:
    """Teacher-forced decoder outputs.

    Attributes:
        logits: (B, T, V) next-word scores for the T = max(lengths) - 1 target positions.
        alphas: (B, T, L) attention weights over the L grid cells at each step.
        mask: (B, T) True where the target is a real token (not padding).
    """

    logits: torch.Tensor
    alphas: torch.Tensor
    mask: torch.Tensor


@dataclass
class Generation:
    """One decoded caption.

    Attributes:
        token_ids: the generated word ids, without ``<start>`` / ``<end>``.
        attention: (T, h, w) attention map of each generated word (each sums to 1).
        score: log-probability of the sequence (including ``<end>`` when generated).
    """

    token_ids: list[int]
    attention: torch.Tensor
    score: float


def doubly_stochastic_loss(alphas: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over images and grid cells of ``(1 - sum_t alpha_ti)^2`` (Xu et al. eq. 14).

    Args:
        alphas: (B, T, L) attention weights.
        mask: (B, T) steps to count (padding steps excluded); all steps when None.
    """
    if mask is not None:
        alphas = alphas * mask.unsqueeze(-1).to(alphas.dtype)
    return ((1.0 - alphas.sum(dim=1)) ** 2).mean()


def sat_losses(output: SATOutput, targets: torch.Tensor, alpha_c: float = 1.0,
               pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Captioning losses of a teacher-forced pass.

    Args:
        output: what :meth:`SATDecoder.forward` returned.
        targets: (B, T) the next-word ids (``captions[:, 1:]``, cut to T steps).
        alpha_c: weight of the doubly stochastic attention penalty.
        pad_id: target id ignored by the cross-entropy.

    Returns:
        ``{"caption_loss": CE over non-pad targets, "attention_loss": alpha_c * penalty}``;
        the training loop sums the ``*_loss`` values.
    """
    logits = output.logits
    caption = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              ignore_index=pad_id)
    attention = alpha_c * doubly_stochastic_loss(output.alphas, output.mask)
    return {"caption_loss": caption, "attention_loss": attention}


def _square_grid(n_cells: int) -> tuple[int, int]:
    side = math.isqrt(n_cells)
    if side * side != n_cells:
        raise ValueError(f"{n_cells} grid cells are not a square; pass grid=(h, w)")
    return side, side


class SATDecoder(nn.Module):
    """LSTM decoder with soft attention over a (B, L, C) grid of image features.

    Args:
        cfg: architecture sizes.
        vocab_size: number of words (specials included; ids 0..2 are pad/start/end).
        feature_dim: C, channels of the encoder grid.
    """

    def __init__(self, cfg: SATConfig, vocab_size: int, feature_dim: int):
        super().__init__()
        self.cfg, self.vocab_size, self.feature_dim = cfg, vocab_size, feature_dim
        E, H, A, C = cfg.embed_dim, cfg.hidden_dim, cfg.attention_dim, feature_dim
        self.embed = nn.Embedding(vocab_size, E, padding_idx=PAD_ID)
        self.att_feat = nn.Linear(C, A)      # W_a a_i, computed once per image
        self.att_hidden = nn.Linear(H, A)    # W_h h_{t-1}
        self.att_out = nn.Linear(A, 1)
        self.f_beta = nn.Linear(H, 1)        # gating scalar
        self.init_h = nn.Linear(C, H)
        self.init_c = nn.Linear(C, H)
        self.lstm = nn.LSTMCell(E + C, H)
        self.out_h = nn.Linear(H, E)         # deep output: L_h h_t
        self.out_z = nn.Linear(C, E)         #              L_z z_t
        self.out = nn.Linear(E, vocab_size)  #              L_o
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()

    # -- building blocks ----------------------------------------------------------------
    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, C) -> initial LSTM (h, c), each (B, H), from the mean annotation."""
        mean = features.mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def attend(self, proj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, L, A) projected features, (B, H) state -> (B, L) attention weights."""
        e = self.att_out(torch.tanh(proj + self.att_hidden(h).unsqueeze(1))).squeeze(-1)
        return e.softmax(dim=-1)

    def step(self, features, proj, words, h, c):
        """One decoding step.

        Args:
            features: (B, L, C) grid; proj: (B, L, A) its attention projection.
            words: (B,) previous word ids; h, c: (B, H) previous state.

        Returns:
            (logits (B, V), h, c, alpha (B, L)).
        """
        alpha = self.attend(proj, h)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (B, C)
        z = torch.sigmoid(self.f_beta(h)) * context
        emb = self.embed(words)
        h, c = self.lstm(torch.cat([emb, z], dim=-1), (h, c))
        logits = self.out(self.dropout(emb + self.out_h(h) + self.out_z(z)))
        return logits, h, c, alpha

    # -- training ------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> SATOutput:
        """Teacher-forced pass.

        Args:
            features: (B, L, C) grid features.
            captions: (B, S) ids ``<start> w.. <end> <pad>..``.
            lengths: (B,) tokens per caption including ``<start>`` and ``<end>``;
                derived from the padding when None.

        Returns:
            :class:`SATOutput` over T = max(lengths) - 1 steps; the targets are
            ``captions[:, 1:T + 1]``.
        """
        if lengths is None:
            lengths = (captions != PAD_ID).sum(dim=1)
        T = int(lengths.max()) - 1
        mask = torch.arange(T, device=captions.device).unsqueeze(0) < (lengths - 1).unsqueeze(1)
        proj = self.att_feat(features)
        h, c = self.init_state(features)
        logits, alphas = [], []
        for t in range(T):
            step_logits, h, c, alpha = self.step(features, proj, captions[:, t], h, c)
            logits.append(step_logits)
            alphas.append(alpha)
        return SATOutput(torch.stack(logits, 1), torch.stack(alphas, 1), mask)

    # -- decoding --------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, features: torch.Tensor, grid: tuple[int, int] | None = None,
               max_len: int | None = None) -> list[Generation]:
        """Most likely word at each step, for a batch.

        Args:
            features: (B, L, C) grid features.
            grid: (h, w) of the grid; square when None.
            max_len: most words per caption (default ``cfg.max_len``).
        """
        h_, w_ = grid or _square_grid(features.shape[1])
        max_len = max_len or self.cfg.max_len
        B = features.shape[0]
        proj = self.att_feat(features)
        h, c = self.init_state(features)
        words = torch.full((B,), START_ID, dtype=torch.long, device=features.device)
        scores = torch.zeros(B, device=features.device)
        ids, alphas = [], []
        length = torch.full((B,), max_len, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        for t in range(max_len):
            logits, h, c, alpha = self.step(features, proj, words, h, c)
            logp = logits.log_softmax(dim=-1)
            words = logp.argmax(dim=-1)
            scores = torch.where(done.to(scores.device), scores,
                                 scores + logp.gather(1, words[:, None]).squeeze(1))
            ids.append(words.cpu())
            alphas.append(alpha.cpu())
            ended = (words.cpu() == END_ID) & ~done
            length[ended] = t
            done |= ended
            if done.all():
                break
        ids_t, alphas_t = torch.stack(ids, 1), torch.stack(alphas, 1)  # (B, T), (B, T, L)
        return [Generation(ids_t[b, :length[b]].tolist(),
                           alphas_t[b, :length[b]].reshape(-1, h_, w_), float(scores[b]))
                for b in range(B)]

    @torch.no_grad()
    def beam_search(self, features: torch.Tensor, beam_size: int = 3,
                    grid: tuple[int, int] | None = None,
                    max_len: int | None = None) -> list[Generation]:
        """Beam search per image; the best finished hypothesis by total log-probability.

        ``beam_size=1`` is exactly :meth:`greedy`. When no hypothesis ends within
        ``max_len`` words, the best unfinished one is returned.

        Args:
            features: (B, L, C) grid features (decoded one image at a time).
            beam_size: hypotheses kept per step.
            grid: (h, w) of the grid; square when None.
            max_len: most words per caption (default ``cfg.max_len``).
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        grid = grid or _square_grid(features.shape[1])
        max_len = max_len or self.cfg.max_len
        return [self._beam_one(features[b:b + 1], beam_size, grid, max_len)
                for b in range(features.shape[0])]

    def _beam_one(self, features, k, grid, max_len) -> Generation:
        V = self.vocab_size
        proj = self.att_feat(features)                      # (1, L, A)
        h, c = self.init_state(features)                    # (1, H)
        words = torch.full((1,), START_ID, dtype=torch.long, device=features.device)
        scores = torch.zeros(1, device=features.device)     # (n,) live hypotheses
        seqs = torch.zeros(1, 0, dtype=torch.long)          # (n, t)
        maps = torch.zeros(1, 0, features.shape[1])         # (n, t, L)
        finished: list[Generation] = []
        for t in range(max_len):
            n = words.shape[0]
            logits, h, c, alpha = self.step(features.expand(n, -1, -1), proj.expand(n, -1, -1),
                                            words, h, c)
            total = (scores[:, None] + logits.log_softmax(dim=-1)).reshape(-1)  # (n * V,)
            top, flat = total.topk(min(k - len(finished), total.numel()))
            src, words = flat // V, flat % V
            seqs = torch.cat([seqs[src.cpu()], words.cpu()[:, None]], 1)
            maps = torch.cat([maps[src.cpu()], alpha.cpu()[src.cpu()].unsqueeze(1)], 1)
            ended = words.cpu() == END_ID
            for i in ended.nonzero().flatten().tolist():
                finished.append(Generation(seqs[i, :-1].tolist(),
                                           maps[i, :-1].reshape(-1, *grid), float(top[i])))
            keep = (~ended).nonzero().flatten()
            if len(finished) == k or len(keep) == 0:
                break
            seqs, maps, scores = seqs[keep], maps[keep], top[keep.to(top.device)]
            kd = keep.to(words.device)
            words, h, c = words[kd], h[src[kd]], c[src[kd]]
        if finished:
            return max(finished, key=lambda g: g.score)
        best = int(scores.argmax())
        return Generation(seqs[best].tolist(), maps[best].reshape(-1, *grid), float(scores[best]))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return pil_to_tensor(image.convert("RGB")).float().div_(255)  # (3, H, W) in [0, 1]


def crop_box(x: torch.Tensor, box: Sequence[float], index: int = 0) -> torch.Tensor:
    """Crop a (3, H, W) image to the pixel box (x0, y0, x1, y1), clamped to the image."""
    H, W = x.shape[-2:]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"image {index}: box {tuple(box)} is empty inside a {W}x{H} image")
    return x[:, y0:y1, x0:x1]


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def encode(backbone: Backbone, images: Sequence[Image.Image], size: int,
           boxes: Sequence[Sequence[float] | None] | None = None,
           batch_size: int = 32) -> torch.Tensor:
    """Grid features of images (or of their boxes) from the frozen backbone.

    Args:
        backbone: the frozen encoder (``forward_map`` gives a stride-``s`` feature map).
        images: PIL images of any size and mode.
        size: each image (crop) is resized to ``size x size`` (aspect not kept, so the
            grid maps linearly onto the box).
        boxes: optional ``(x0, y0, x1, y1)`` pixel box per image (None = whole image),
            e.g. the saliency box.
        batch_size: images per backbone pass.

    Returns:
        (B, h * w, C) float32 features, row-major over the (h, w) = (size/s, size/s) grid.
    """
    if boxes is not None and len(boxes) != len(images):
        raise ValueError(f"{len(boxes)} boxes for {len(images)} images")
    if not images:
        return torch.zeros(0, 0, backbone.feature_dim)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = []
        for i in range(start, min(start + batch_size, len(images))):
            x = _to_tensor(images[i])
            if boxes is not None and boxes[i] is not None:
                x = crop_box(x, boxes[i], i)
            pixels.append(F.interpolate(x[None], size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)[0])
        batch = torch.stack(pixels).to(_device_of(backbone))
        fmap = backbone.forward_map(backbone.normalize(batch))  # (b, C, h, w)
        chunks.append(fmap.flatten(2).transpose(1, 2).float())                # (b, h*w, C)
    return torch.cat(chunks)
