"""The pipeline made visible for one product: what the demo's Product inspector shows.

:class:`Inspector` holds the models once (patch extractor with its saliency detector, the
SAT captioner, optionally a Kaleido-BERT retrieval fine-tune) and :meth:`Inspector.inspect`
returns, for one image and its title, every stage as pictures and numbers:

1. the saliency mask and box (U2-Net-p),
2. the kaleido patch grids 1x1 .. 5x5 on the box,
3. the SAT caption and its per-word attention maps,
4. the token-patch pre-alignments derived from that attention,
5. one draw of alignment-guided masking (which words and patches get hidden),
6. the Kaleido-BERT match score against its own title and a hard negative's, and the
   attention of each title word over the level-5 patches ("why this match").

Everything is computed live from the image (about 2 s on a 2-core CPU after loading).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


@dataclass
class Inspection:
    """The outputs of :meth:`Inspector.inspect` (pictures are PIL images)."""

    box: tuple
    saliency_fallback: bool
    saliency: Image.Image                 # image | mask | overlay
    grids: Image.Image                    # mask | 1x1 | ... | 5x5
    caption: str = ""
    attention: Image.Image | None = None  # one panel per caption word
    alignments: Image.Image | None = None
    aligned_words: list = field(default_factory=list)   # (word, level, patch, score)
    masking: Image.Image | None = None
    masked_tokens: list = field(default_factory=list)   # (token, masked?) over [CLS] title [SEP]
    match: dict | None = None             # {"own": (title, log-odds), "negative": (title, log-odds)}
    why: Image.Image | None = None        # per title word: its attention over the patches
    seconds: dict = field(default_factory=dict)


def _figure_to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def heat_from_patches(weights: np.ndarray, positions: np.ndarray, size, level: slice) -> np.ndarray:
    """Paint per-patch weights of one level into an (H, W) map in [0, 1]."""
    w_img, h_img = size
    heat = np.zeros((h_img, w_img), np.float32)
    for k in range(level.start, level.stop):
        x1, x2, y1, y2 = positions[k, :4]
        xa, ya = int(x1 * w_img), int(y1 * h_img)
        xb, yb = max(xa + 1, int(round(x2 * w_img))), max(ya + 1, int(round(y2 * h_img)))
        heat[ya:yb, xa:xb] += weights[k] / ((xb - xa) * (yb - ya))
    return heat / max(float(heat.max()), 1e-12)


def draw_masking(image: Image.Image, positions: np.ndarray, patches: dict[int, list[int]], panel: int = 200) -> Image.Image:
    """One panel per level: the masked patches blacked out, outlined in the level's colour."""
    from kaleido.patches.visualize import LEVEL_COLOURS

    panels = []
    for level, idx in sorted(patches.items()):
        canvas = image.convert("RGB").copy()
        d = ImageDraw.Draw(canvas, "RGBA")
        for k in idx:
            x1, x2, y1, y2 = positions[k, :4] * [canvas.width, canvas.width, canvas.height, canvas.height]
            d.rectangle((x1, y1, x2 - 1, y2 - 1), fill=(0, 0, 0, 170), outline=LEVEL_COLOURS[level - 1], width=3)
        d.text((4, 4), f"{level}x{level}: {len(idx)} masked", fill=(0, 0, 0, 255))
        canvas.thumbnail((panel, panel))
        panels.append(canvas)
    if not panels:
        return image.convert("RGB")
    out = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 4
    return out


def draw_word_heat(image: Image.Image, heats: dict[str, np.ndarray], cols: int = 5, panel: float = 2.0) -> Image.Image:
    """Title words with their attention maps over the image (matplotlib 'jet' overlay)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    words = list(heats)
    rows = max(1, -(-len(words) // cols))
    fig = Figure(figsize=(panel * min(cols, max(1, len(words))), panel * 1.15 * rows))
    for i, word in enumerate(words):
        ax = fig.add_subplot(rows, min(cols, len(words)), i + 1)
        ax.imshow(image)
        ax.imshow(heats[word], cmap="jet", alpha=0.45, extent=(0, image.width, image.height, 0))
        ax.set_title(word, fontsize=9)
        ax.axis("off")
    return _figure_to_image(fig)


def patch_attention(task, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaleido-BERT's attention weights for ``batch`` and its match scores.

    The encoder's attention implementation is switched to eager for this one pass (sdpa returns
    no weights) and restored; each layer's self-attention is hooked.

    Returns:
        ``((B, layers, heads, T + P, T + P) attention, text first), (B,) match log-odds``.
    """
    if task.model.config.architecture != "single_stream":
        raise ValueError("the attention inspector reads the single-stream encoder's text-to-patch attention; "
                         f"this model is {task.model.config.architecture}")
    enc = task.model.encoder
    old, grabbed = enc.config._attn_implementation, []
    enc.config._attn_implementation = "eager"
    hooks = [layer.attention.self.register_forward_hook(lambda m, i, o: grabbed.append(o[1])) for layer in enc.layer]
    try:
        with torch.inference_mode():
            scores = task.score(batch)
    finally:
        for h in hooks:
            h.remove()
        enc.config._attn_implementation = old
    return torch.stack(grabbed, 1), scores


class Inspector:
    """The models of the inspector, loaded once.

    Args:
        patch_config: the :class:`~kaleido.patches.extract.PatchConfig` of the features the
            Kaleido-BERT model reads (a cache's ``meta["config"]`` dict is accepted).
        captioner: a SAT run folder (None: no caption, attention or alignments).
        matcher: a fine-tuned Kaleido-BERT retrieval folder (None: no match score).
    """

    def __init__(self, patch_config, captioner: str | Path | None = None, matcher: str | Path | None = None):
        import dataclasses

        from omegaconf import OmegaConf

        from kaleido.patches.extract import PatchConfig, PatchExtractor

        if isinstance(patch_config, dict):
            patch_config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PatchConfig), patch_config))
        self.patch_config = dataclasses.replace(patch_config, extras=False)
        self.extractor = PatchExtractor.from_config(self.patch_config)
        self.captioner = None
        if captioner:
            from sat_captioner import Captioner

            self.captioner = Captioner.from_pretrained(captioner, backbone=self.extractor.backbone)
        self.task = self.processor = None
        if matcher:
            from kaleido.finetune.base import load_task
            from kaleido.model.processor import KaleidoProcessor

            self.task = load_task(matcher, "retrieval")
            self.processor = KaleidoProcessor.from_pretrained(matcher)

    def inspect(self, image: Image.Image, title: str, negative: str | None = None, seed: int = 0) -> Inspection:
        """Every stage of the pipeline for ``image`` with its ``title`` (and a negative title)."""
        import time

        from kaleido.patches.visualize import draw_patch_grids
        from saliency.visualize import side_by_side

        t = {}
        start = time.perf_counter()
        image = image.convert("RGB")
        sal = self.extractor.detector.detect(image) if self.extractor.detector is not None else None
        box = tuple(int(v) for v in sal.box) if sal is not None else (0, 0, image.width, image.height)
        fallback = bool(sal.fallback) if sal is not None else True
        out = Inspection(box=box, saliency_fallback=fallback,
                         saliency=side_by_side(image, sal) if sal is not None else image,
                         grids=draw_patch_grids(image, box, self.patch_config.grids,
                                                mask=sal.mask if sal is not None else None))
        t["saliency + grids"] = time.perf_counter() - start
        start = time.perf_counter()
        feats = self.extractor.extract([image], boxes=[(box, fallback)])[0]
        t["patch features"] = time.perf_counter() - start
        pairs = []
        if self.captioner is not None:
            start = time.perf_counter()
            from kaleido.alignment.generator import AlignmentConfig, align_product
            from kaleido.alignment.visualize import draw_alignments
            from kaleido.tokenizer import load_tokenizer
            from sat_captioner.visualize import draw_attention

            cap = self.captioner.caption([image], beam_size=3)[0]
            out.caption = cap.text
            out.attention = _figure_to_image(draw_attention(image, cap))
            acfg = AlignmentConfig()
            pairs = align_product(cap.words, cap.attention.numpy(), title, feats.positions,
                                  list(self.patch_config.grids), load_tokenizer(acfg.tokenizer), acfg)
            out.aligned_words = [(p.word, p.level, p.patch, round(float(p.score), 3)) for p in pairs]
            out.alignments = draw_alignments(image, {"caption": cap.text, "pairs": [asdict(p) for p in pairs]},
                                             feats.positions, title)
            t["caption + alignments"] = time.perf_counter() - start
        if self.processor is not None:
            start = time.perf_counter()
            self._masking(out, image, title, feats, pairs, seed)
            self._match(out, image, title, negative, feats)
            t["masking + match"] = time.perf_counter() - start
        out.seconds = {k: round(v, 2) for k, v in t.items()}
        return out

    def _masking(self, out: Inspection, image, title, feats, pairs, seed: int) -> None:
        from kaleido.patches.geometry import level_slices
        from kaleido.pretrain.masking import MaskingConfig, plan_masks, word_groups

        ids, word_ids = self.processor.encode_text(title)
        apairs = [(p.tokens, p.patch) for p in pairs if max(p.tokens) < len(ids) - 1]
        plan = plan_masks(word_groups(word_ids), apairs, level_slices(self.processor.grids),
                          np.random.default_rng(seed), MaskingConfig(strategy="agm"))
        tokens = self.processor.tokenizer.convert_ids_to_tokens(list(ids))
        masked = set(plan.tokens)
        out.masked_tokens = [(tok, i in masked) for i, tok in enumerate(tokens)]
        out.masking = draw_masking(image, feats.positions, plan.patches)

    def _match(self, out: Inspection, image, title, negative, feats) -> None:
        from kaleido.patches.geometry import level_slices

        texts = [title] + ([negative] if negative else [])
        batch = self.processor(texts=texts, features=[feats] * len(texts))
        attn, scores = patch_attention(self.task, batch)
        out.match = {"own": (title, float(scores[0]))}
        if negative:
            out.match["negative"] = (negative, float(scores[1]))
        n_text = batch["input_ids"].shape[1]
        tp = attn[0, :, :, :n_text, n_text:].mean((0, 1)).numpy()
        tp = tp / np.maximum(tp.sum(1, keepdims=True), 1e-12)
        _, word_ids = self.processor.encode_text(title)
        tokens = self.processor.tokenizer.convert_ids_to_tokens(list(batch["input_ids"][0][:len(word_ids)]))
        rows: dict[int, list[int]] = {}
        for t, w in enumerate(word_ids):
            if w is not None:
                rows.setdefault(w, []).append(t)
        level = level_slices(self.processor.grids)[max(self.processor.grids)]
        heats = {}
        for w, ts in list(rows.items())[:10]:
            word = "".join(tokens[i].removeprefix("##") for i in ts)
            heats[word] = heat_from_patches(tp[ts].mean(0), feats.positions, image.size, level)
        out.why = draw_word_heat(image, heats) if heats else None
