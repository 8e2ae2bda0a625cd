"""``kaleido dual from-linear``: a linear reference served as a dual encoder gives the same
embeddings, through every path a dual encoder is used by (save / load, the processor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaleido.baselines.features import TitleEncoder
from kaleido.baselines.linear_probe import LinearDualEncoder
from kaleido.cli import main
from kaleido.dual import load_dual
from kaleido.dual.encode import embed_patches, embed_texts
from kaleido.patches.extract import PatchFeatures


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = LinearDualEncoder(1280, 384, dim=32)
    g = np.random.default_rng(0)
    model.fit_standardisation(g.normal(2.0, 3.0, (50, 1280)).astype(np.float32),
                              g.normal(0.1, 0.2, (50, 384)).astype(np.float32))
    with torch.no_grad():
        model.logit_scale.fill_(3.1)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))   # biases off zero too
    return model.eval()


def test_the_converted_model_embeds_as_the_linear_one(linear, tmp_path, capsys):
    linear.save_pretrained(tmp_path / "linear")
    assert main(["dual", "from-linear", "--linear", str(tmp_path / "linear"), "--out", str(tmp_path / "dual")]) == 0
    assert "as a dual encoder" in capsys.readouterr().out
    model, processor = load_dual(tmp_path / "dual")
    assert model.config.image.tower == "linear" and processor.whole_image

    whole = np.random.default_rng(1).normal(2.0, 3.0, (3, 1280)).astype(np.float32)
    titles = ["Nike Men Navy Blue T-shirt", "Lavie Women Pink Handbag with a very long title " * 6, "Red kurta"]
    with torch.no_grad():
        expected_text = linear.embed_text(torch.from_numpy(TitleEncoder()(titles))).numpy()
        expected_image = linear.embed_image(torch.from_numpy(whole)).numpy()
    np.testing.assert_allclose(embed_texts(model, processor, titles), expected_text, atol=2e-5)

    items = [PatchFeatures(features=np.zeros((55, 1280), np.float32), positions=np.zeros((55, 5), np.float32),
                           box=np.zeros(4), image_size=np.zeros(2), saliency_fallback=False, whole_image=w)
             for w in whole]
    np.testing.assert_allclose(embed_patches(model, processor, items), expected_image, atol=2e-5)
    assert float(model.scale().detach()) == pytest.approx(float(linear.logit_scale.detach().exp()), rel=1e-6)


def test_the_linear_tower_needs_the_whole_image_feature():
    from kaleido.dual.config import ImageTowerConfig

    with pytest.raises(ValueError, match="whole_image=true"):
        ImageTowerConfig(tower="linear")


def test_constant_text_dimensions_are_dropped_and_the_weights_fit_float16(linear):
    """MiniLM has dimensions that never vary (std at the 1e-6 floor): folding 1 / std would
    put 1e5 in the release's float16 weights (inf)."""
    from kaleido.dual.convert import dual_from_linear

    constant = LinearDualEncoder(1280, 384, dim=32)
    constant.load_state_dict(linear.state_dict())
    with torch.no_grad():
        constant.text_std[:3] = 1e-6
    model, _ = dual_from_linear(constant)
    assert torch.all(model.text_proj.weight[:, :3] == 0)
    assert torch.isfinite(model.state_dict()["text_proj.weight"].half()).all()
    torch.testing.assert_close(model.text_proj.weight[:, 3:], linear.text[1].weight[:, 3:] / linear.text_std[3:])


def test_the_float16_release_copy_embeds_as_the_float32_model(linear, tmp_path):
    """The release stores every weight in float16: the folded projection and the image
    standardisation must survive it."""
    import shutil

    from kaleido.dual.convert import save_dual_from_linear
    from kaleido.release.assemble import copy_model

    save_dual_from_linear(linear, tmp_path / "dual")
    copy_model(tmp_path / "dual", tmp_path / "release")
    full, processor = load_dual(tmp_path / "dual")
    half, _ = load_dual(tmp_path / "release")
    titles = ["Nike Men Navy Blue T-shirt", "Red kurta"]
    np.testing.assert_allclose(embed_texts(half, processor, titles), embed_texts(full, processor, titles), atol=3e-3)
    whole = np.random.default_rng(2).normal(2.0, 3.0, (2, 1280)).astype(np.float32)
    items = [PatchFeatures(features=np.zeros((55, 1280), np.float32), positions=np.zeros((55, 5), np.float32),
                           box=np.zeros(4), image_size=np.zeros(2), saliency_fallback=False, whole_image=w)
             for w in whole]
    np.testing.assert_allclose(embed_patches(half, processor, items), embed_patches(full, processor, items), atol=3e-3)
    shutil.rmtree(tmp_path / "release")
