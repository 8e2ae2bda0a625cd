"""The seven pre-training heads (DESIGN.md stage 7), one module each.

Every head reads the encoder output and the batch, and returns ``{"<name>_loss": t}``
(plus an accuracy where one is meaningful). Patch indices are global (0..54 for the
1x1..5x5 grids); level slices come from :func:`kaleido.patches.geometry.level_slices`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kaleido.contrastive import info_nce
from kaleido.model.config import KaleidoBertConfig
from kaleido.model.modeling import KaleidoBertOutput
from kaleido.patches.geometry import level_slices


def _mlp(hidden: int, out: int, eps: float, width_in: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in or hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps),
                         nn.Linear(hidden, out))


def _level(cfg: KaleidoBertConfig, grid: int, head: str) -> slice:
    levels = level_slices(cfg.grids)
    if grid not in levels:
        raise ValueError(f"the {head} head needs the {grid}x{grid} level; the model's grids are {cfg.grids}")
    return levels[grid]


def _classification(name: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"<name>_loss": cross-entropy, "<name>_acc": accuracy}`` of one classification head."""
    return {f"{name}_loss": F.cross_entropy(logits.float(), labels),
            f"{name}_acc": (logits.argmax(-1) == labels).float().mean().detach()}


class AMLMHead(nn.Module):
    """Aligned masked language modelling: cross-entropy over the vocabulary at masked tokens.

    BERT's prediction head (dense + GELU + LayerNorm, decoder tied to the word embeddings).
    Labels are -100 where nothing is predicted.
    """

    name = "amlm"

    def __init__(self, cfg: KaleidoBertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.GELU(),
                                       nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps))
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied, as in BERT
        nn.init.zeros_(self.decoder.bias)

    def forward(self, out: KaleidoBertOutput, batch: dict) -> dict[str, torch.Tensor]:
        labels = batch["mlm_labels"]                                   # (B, T)
        chosen = labels != -100
        hidden = out.text_hidden[chosen]                               # (N, H): only masked tokens
        if hidden.shape[0] == 0:  # nothing masked: a zero that still reaches every parameter (DDP)
            return {"amlm_loss": self.decoder(self.transform(out.text_hidden[:, :1])).sum() * 0.0}
        logits = self.decoder(self.transform(hidden))                  # (N, V)
        return _classification("amlm", logits, labels[chosen])


INTERACTIONS = ("none", "product", "bilinear")


def interaction_kind(value: str | bool, what: str = "ITM interaction") -> str:
    """One of :data:`INTERACTIONS`; ``True`` / ``False`` (configs written before the bilinear
    term) mean ``product`` / ``none``."""
    kind = {True: "product", False: "none"}.get(value, value)
    if kind not in INTERACTIONS:
        raise ValueError(f"{what} must be one of {INTERACTIONS}, not {value!r}")
    return kind


class BilinearMatch(nn.Module):
    """``(A t) . (B v)``: a rank-``dim`` bilinear form of the mean text state ``t`` and the mean
    patch state ``v``, the score of a dual encoder computed inside the fused pass.

    ``B`` starts at zero (as LoRA's up-projection), so a head with this term scores exactly as
    one without it at step 0 and the term grows from the first gradient.
    """

    def __init__(self, hidden: int, dim: int = 256):
        super().__init__()
        self.text = nn.Linear(hidden, dim, bias=False)
        self.image = nn.Linear(hidden, dim, bias=False)
        nn.init.normal_(self.text.weight, std=hidden ** -0.5)
        nn.init.zeros_(self.image.weight)

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(B, H), (B, H) -> (B,)."""
        return (self.text(text) * self.image(patches)).sum(-1)


class ITMHead(nn.Module):
    """Image-text matching from the pooled output: 1 = the text belongs to the image.

    Until cross-modal attention forms, the pooled state is close to a sum of a text part and
    an image part, and an additive score cannot tell a true pair from a negative that shares
    its image or its text (the 1-in-G softmax of retrieval fine-tuning gives it no gradient:
    the loss stays at ln G). ``interaction`` adds a text-image term from the first step:

    - ``"product"``: a linear map of the elementwise product of the mean text and the mean
      patch hidden states (a diagonal bilinear form: it needs the two to share coordinates);
    - ``"bilinear"``: :class:`BilinearMatch`, a full low-rank bilinear form of the same two
      states added to the match logit (the dual encoder's score shape, any coordinates).
    """

    name = "itm"

    def __init__(self, cfg: KaleidoBertConfig, interaction: str | bool = "none"):
        super().__init__()
        self.kind = interaction = interaction_kind(interaction)
        self.classifier = nn.Linear(cfg.hidden_size, 2)
        self.interaction: nn.Module | None = None
        if interaction == "product":
            self.interaction = nn.Linear(cfg.hidden_size, 2)
        elif interaction == "bilinear":
            self.interaction = BilinearMatch(cfg.hidden_size)

    def logits(self, out: KaleidoBertOutput) -> torch.Tensor:
        logits = self.classifier(out.pooled)                           # (B, 2)
        if self.kind == "product":
            text, patches = out.modality_means()                       # (B, H) each
            logits = logits + self.interaction(text * patches)
        elif self.kind == "bilinear":
            text, patches = out.modality_means()
            match = self.interaction(text, patches)                    # (B,)
            logits = logits + torch.stack([torch.zeros_like(match), match], dim=1)
        return logits

    def forward(self, out: KaleidoBertOutput, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.logits(out)
        return _classification("itm", logits, batch["itm_labels"])


class ITCHead(nn.Module):
    """Image-text contrastive alignment before fusion (ALBEF): the text-only and patch-only
    passes of the same encoder, projected to a shared space, symmetric InfoNCE over the batch
    with same-title products left out as negatives. Its similarities also mine the hard
    negatives of ITM (:class:`kaleido.pretrain.task.PretrainTask`).
    """

    name = "itc"

    def __init__(self, cfg: KaleidoBertConfig, dim: int = 256, temperature: float = 0.07):
        super().__init__()
        self.text_proj = nn.Linear(cfg.hidden_size, dim)
        self.image_proj = nn.Linear(cfg.hidden_size, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def embed(self, text_pooled: torch.Tensor, image_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H), (B, H) unimodal pooled states -> (B, E), (B, E) L2-normalised embeddings."""
        return (F.normalize(self.text_proj(text_pooled).float(), dim=-1),
                F.normalize(self.image_proj(image_pooled).float(), dim=-1))

    def forward(self, text: torch.Tensor, image: torch.Tensor, groups: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``text``, ``image``: embeddings of :meth:`embed`; returns the loss, the in-batch
        image-to-text top-1 accuracy and ``itc_sim`` (B images, B texts) cosine similarities."""
        sim = image @ text.t()                                          # (B, B)
        loss = info_nce(image, text, self.logit_scale, groups)
        hit = sim.argmax(1) == torch.arange(len(sim), device=sim.device)
        if groups is not None:  # a same-title twin is a correct answer
            hit = groups[sim.argmax(1)] == groups
        return {"itc_loss": loss, "itc_acc": hit.float().mean().detach(), "itc_sim": sim.detach()}


class RotationHead(nn.Module):
    """AKPM I (RR): the 1x1 patch was rotated by 0/90/180/270 degrees; 4-way classification."""

    name = "rr"

    def __init__(self, cfg: KaleidoBertConfig):
        super().__init__()
        self.index = _level(cfg, 1, "rotation").start
        self.classifier = _mlp(cfg.hidden_size, 4, cfg.layer_norm_eps)

    def forward(self, out: KaleidoBertOutput, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.classifier(out.patch_hidden[:, self.index])     # (B, 4)
        return _classification("rr", logits, batch["rr_labels"])


class JigsawHead(nn.Module):
    """AKPM II (JPS): which of the 24 permutations shuffled the four 2x2 patches."""

    name = "jps"

    def __init__(self, cfg: KaleidoBertConfig):
        super().__init__()
        self.level = _level(cfg, 2, "jigsaw")
        self.classifier = _mlp(cfg.hidden_size, 24, cfg.layer_norm_eps, width_in=4 * cfg.hidden_size)

    def forward(self, out: KaleidoBertOutput, batch: dict) -> dict[str, torch.Tensor]:
        hidden = out.patch_hidden[:, self.level]                       # (B, 4, H)
        logits = self.classifier(hidden.flatten(1))                    # (B, 4H) -> (B, 24)
        return _classification("jps", logits, batch["jps_labels"])


class CamouflageHead(nn.Module):
    """AKPM III (CP): which of the nine 3x3 patches comes from another product."""

    name = "cp"

    def __init__(self, cfg: KaleidoBertConfig):
        super().__init__()
        self.level = _level(cfg, 3, "camouflage")
        self.scorer = _mlp(cfg.hidden_size, 1, cfg.layer_norm_eps)

    def forward(self, out: KaleidoBertOutput, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.scorer(out.patch_hidden[:, self.level]).squeeze(-1)   # (B, 9)
        return _classification("cp", logits, batch["cp_labels"])


PATCH_LOSSES = ("kl", "l2")


class ColourHead(nn.Module):
    """Feature reconstruction at corrupted patches: KL(softmax(target) || softmax(prediction))
    (the paper's), or ``loss="l2"``: the squared error of the features themselves (ImageBERT's
    masked region feature regression).

    AKPM IV (G2CM): the two grey 4x4 patches; AKPM V (B2CM): the three blank 5x5 patches
    (on a single fixed grid, FashionBERT's masked patch modelling: its blanked patches).
    The batch holds ``<name>_index`` (B, k) global patch indices and ``<name>_target``
    (B, k, D) the original colour features.
    """

    def __init__(self, cfg: KaleidoBertConfig, name: str, grid: int, loss: str = "kl"):
        super().__init__()
        if loss not in PATCH_LOSSES:
            raise ValueError(f"patch loss must be one of {PATCH_LOSSES}, not {loss!r}")
        self.name, self.loss = name, loss
        _level(cfg, grid, name)
        self.regressor = _mlp(cfg.hidden_size, cfg.feature_dim, cfg.layer_norm_eps)

    def forward(self, out: KaleidoBertOutput, batch: dict) -> dict[str, torch.Tensor]:
        index = batch[f"{self.name}_index"]                            # (B, k)
        target = batch[f"{self.name}_target"]                          # (B, k, D)
        hidden = out.patch_hidden
        picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, k, H)
        pred = self.regressor(picked).float().flatten(0, 1)            # (B*k, D)
        target = target.float().flatten(0, 1)
        if self.loss == "l2":  # mean squared error per feature value (on the scale of the other losses)
            return {f"{self.name}_loss": F.mse_loss(pred, target)}
        loss = F.kl_div(F.log_softmax(pred, -1), F.log_softmax(target, -1), reduction="batchmean", log_target=True)
        return {f"{self.name}_loss": loss}


HEAD_NAMES = ("amlm", "itm", "itc", "rr", "jps", "cp", "g2cm", "b2cm", "wpa")


def build_head(name: str, cfg: KaleidoBertConfig, word_embeddings: nn.Embedding,
               patch_loss: str = "kl") -> nn.Module:
    """The head called ``name`` (one of :data:`HEAD_NAMES`); ``patch_loss`` is the G2CM / B2CM
    reconstruction loss (``kl`` or ``l2``)."""
    if name == "amlm":
        return AMLMHead(cfg, word_embeddings)
    if name == "g2cm":
        return ColourHead(cfg, "g2cm", 4, patch_loss)
    if name == "wpa":  # ViLT's word-patch alignment on the ITM pass (no parameters)
        from kaleido.pretrain.wpa import WPAHead

        return WPAHead()
    if name == "b2cm":  # the finest level: 5x5 for kaleido patches, 8x8 for FashionBERT's grid
        return ColourHead(cfg, "b2cm", max(cfg.grids), patch_loss)
    heads = {"itm": ITMHead, "itc": ITCHead, "rr": RotationHead, "jps": JigsawHead, "cp": CamouflageHead}
    if name not in heads:
        raise ValueError(f"unknown pre-training head {name!r}; known: {', '.join(HEAD_NAMES)}")
    return heads[name](cfg)
