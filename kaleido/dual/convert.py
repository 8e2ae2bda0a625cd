"""A linear reference (``LinearDualEncoder``) as a dual encoder, exactly.

The tuned-backbone run (``kaleido baseline tune-backbone``) trains two linear maps over the
whole-image feature and the mean-pooled MiniLM title. Served as they are, they score above a
dual encoder trained again on top of the tuned features (docs/MEASUREMENTS.md, "Session 22"),
so :func:`dual_from_linear` writes them as a :class:`~kaleido.dual.DualEncoder` folder that the
index, the search engine, ``kaleido eval`` and the release read like any other:

- image: the ``linear`` tower (the map's standardisation as buffers, the map itself), then an
  identity projection;
- text: the frozen MiniLM body, mean pooled over the real tokens (what ``TitleEncoder``
  computes), then the text map folded into one projection with a bias:
  ``W ((x - m) / s) + b = (W / s) x + (b - W (m / s))``;
- the temperature as learned.

Text dimensions that were constant on the training products (std at the reference's 1e-6
floor; three of MiniLM's 384, always within 1e-7 of their mean) are dropped from the fold:
their standardised value stays below 0.01 on every product, and ``1 / std`` would overflow the
release's float16. Otherwise the embeddings equal the linear model's up to float rounding
(``tests/test_dual_convert.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kaleido.dual.config import DualEncoderConfig, ImageTowerConfig, TextTowerConfig

log = logging.getLogger(__name__)

#: A standardised input dimension with a std at or below this was constant on the training
#: products (the reference floors std at 1e-6).
CONSTANT_STD = 1e-5


def dual_from_linear(linear, max_text_len: int | None = None):
    """(DualEncoder, DualProcessor) computing the same embeddings as a ``LinearDualEncoder``
    over whole-image features and mean-pooled MiniLM titles.

    Args:
        linear: a :class:`~kaleido.baselines.linear_probe.LinearDualEncoder` or its folder.
        max_text_len: title tokens (default: the reference's ``GlobalFeatureConfig.max_text_len``).
    """
    from kaleido.baselines.features import GlobalFeatureConfig
    from kaleido.baselines.linear_probe import LinearDualEncoder
    from kaleido.dual.modeling import create_dual_encoder
    from kaleido.dual.processor import DualProcessor

    if isinstance(linear, (str, Path)):
        linear = LinearDualEncoder.from_pretrained(linear)
    dims = linear.dims
    cfg = DualEncoderConfig(
        image=ImageTowerConfig(tower="linear", whole_image=True, whole_image_dim=dims["image_dim"],
                               hidden_size=dims["dim"], dropout=dims["dropout"]),
        text=TextTowerConfig(init="minilm", pooling="mean", freeze=True),
        embed_dim=dims["dim"], text_proj_bias=True)
    model = create_dual_encoder(cfg, pretrained=True)
    if model.text.bert.config.hidden_size != dims["text_dim"]:
        raise ValueError(f"the linear model's text side is {dims['text_dim']}-d; MiniLM gives "
                         f"{model.text.bert.config.hidden_size}-d")
    src = linear.state_dict()
    with torch.no_grad():
        model.image.mean.copy_(src["image_mean"])
        model.image.std.copy_(src["image_std"])
        model.image.map[1].weight.copy_(src["image.1.weight"])
        model.image.map[1].bias.copy_(src["image.1.bias"])
        model.image_proj.weight.copy_(torch.eye(dims["dim"]))
        scale = src["text_std"]
        w = src["text.1.weight"] * (scale > CONSTANT_STD)[None, :]     # constant dimensions dropped
        model.text_proj.weight.copy_(w / scale[None, :])
        model.text_proj.bias.copy_(src["text.1.bias"] - w @ (src["text_mean"] / scale))
        model.logit_scale.copy_(src["logit_scale"])
    dropped = int((scale <= CONSTANT_STD).sum())
    if dropped:
        log.info("text side: %d dimensions constant on the training products dropped from the fold", dropped)
    largest = max(float(t.abs().max()) for t in model.state_dict().values() if t.is_floating_point())
    if largest >= torch.finfo(torch.float16).max:
        raise ValueError(f"a converted weight reaches {largest:.3g}, beyond float16; the release cannot store it")
    processor = DualProcessor.default(max_text_len=max_text_len or GlobalFeatureConfig().max_text_len,
                                      whole_image=True)
    return model.eval(), processor


def save_dual_from_linear(linear, out: str | Path) -> Path:
    """:func:`dual_from_linear`, saved as a dual encoder folder (``kaleido dual from-linear``)."""
    model, processor = dual_from_linear(linear)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info("wrote %s: the linear maps as a dual encoder (linear image tower, frozen MiniLM)", out)
    return out
