"""ImageBERT-style options: masked patch feature regression (L2) and two-stage pre-training
(stage 2 starts from stage 1's encoder and heads)."""

import pytest
import torch

from kaleido.cli import main
from kaleido.config import load_config
from kaleido.model import create_model
from kaleido.model.modeling import KaleidoBertOutput
from kaleido.pretrain.config import PretrainConfig
from kaleido.pretrain.heads import ColourHead
from kaleido.pretrain.run import build_task


def test_l2_patch_regression_is_the_squared_error_of_the_masked_features():
    torch.manual_seed(0)
    cfg = create_model("tiny").config
    head = ColourHead(cfg, "b2cm", 5, loss="l2")
    hidden = torch.randn(2, 4 + cfg.num_patches, cfg.hidden_size)
    out = KaleidoBertOutput(last_hidden_state=hidden, pooled=hidden[:, 0], text_length=4)
    index = torch.tensor([[30, 31, 54], [40, 41, 42]])
    picked = torch.stack([out.patch_hidden[b, index[b]] for b in range(2)])   # (2, 3, H)
    with torch.no_grad():
        pred = head.regressor(picked)
    for shift, want in ((0.0, 0.0), (1.0, 1.0), (-3.0, 9.0)):  # the mean squared error per value
        loss = head(out, {"b2cm_index": index, "b2cm_target": pred + shift})["b2cm_loss"]
        torch.testing.assert_close(loss, torch.tensor(want), atol=1e-5, rtol=1e-5)
    kl_head = ColourHead(cfg, "b2cm", 5)
    kl_head.load_state_dict(head.state_dict())  # the same regressor, the paper's loss
    kl = kl_head(out, {"b2cm_index": index, "b2cm_target": pred + 1.0})["b2cm_loss"]
    assert kl.abs() < 1e-5  # the KL of softmaxes cannot see a constant shift; the L2 loss does
    with pytest.raises(ValueError, match="patch loss"):
        ColourHead(cfg, "b2cm", 5, loss="cosine")
    assert load_config(PretrainConfig, "imagebert", component="pretrain").tasks.patch_loss == "l2"


def test_stage_two_starts_from_stage_one(pretrain_data, tmp_path, caplog):
    d = pretrain_data
    data = ["--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]),
            "--cache", str(d["cache"]), "--split-file", str(d["split"])]
    imagebert = ["masking.strategy=random", "tasks.patch_loss=l2", "tasks.rr=0", "tasks.jps=0", "tasks.cp=0",
                 "tasks.g2cm=0"]
    stage1 = tmp_path / "stage1"
    assert main(["pretrain", "--config", "tiny", *data, "--out", str(stage1), "train.max_steps=3", *imagebert]) == 0
    cfg = load_config(PretrainConfig, "tiny", [*imagebert, f"init={stage1 / 'final'}"], component="pretrain")
    task = build_task(cfg, 32, [1, 2, 3, 4, 5])
    saved = create_model(pretrained=str(stage1 / "final")).state_dict()
    for name, value in task.model.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)
    from safetensors.torch import load_file

    heads = load_file(str(stage1 / "final" / "pretrain_heads.safetensors"))
    torch.testing.assert_close(task.heads["b2cm"].regressor[0].weight, heads["b2cm.regressor.0.weight"])
    stage2 = tmp_path / "stage2"
    assert main(["pretrain", "--config", "tiny", *data, "--out", str(stage2), "train.max_steps=2", *imagebert,
                 f"init={stage1 / 'final'}"]) == 0
    assert "multi-stage" in caplog.text
