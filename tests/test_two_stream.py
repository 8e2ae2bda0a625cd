"""ViLBERT-style two-stream Kaleido-BERT: shapes, what each stream may see (co-attention,
padding, the captioning mask), gradients, saving, and a tiny pre-train -> fine-tune -> eval."""

import json

import pytest
import torch

from kaleido.cli import main
from kaleido.finetune.caption import seq2seq_pattern
from kaleido.model import create_model
from kaleido.model.coattention import CoAttentionBlock
from kaleido.model.modeling import KaleidoBertModel

B, T, P = 3, 7, 55


def _model(**kw) -> KaleidoBertModel:
    torch.manual_seed(0)
    return create_model("tiny", architecture="two_stream", image_layers=1, co_attention_layers=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0                                                      # product 0 has 5 real tokens
    return ids, torch.randn(B, P, 32, generator=g), torch.rand(B, P, 5, generator=g), mask


def test_shapes_and_every_part_gets_gradients():
    model = _model().train()
    ids, feats, pos, mask = _inputs()
    out = model(ids, feats, pos, mask)
    assert out.last_hidden_state.shape == (B, T + P, 32) and out.pooled.shape == (B, 32)
    assert out.text_hidden.shape == (B, T, 32) and out.patch_hidden.shape == (B, P, 32)
    (out.pooled.sum() + out.last_hidden_state.pow(2).mean()).backward()
    for name in ("image_encoder.layer.0.attention.self.query.weight", "co_layers.1.text.query.weight",
                 "co_layers.1.image.value.weight", "encoder.layer.0.output.dense.weight",
                 "patch_embeddings.feature_proj.0.weight", "image_pooler.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert KaleidoBertModel(model.config.__class__()).config.architecture == "single_stream"


def test_the_streams_meet_only_in_the_co_attention_layers():
    model = _model()
    ids, feats, pos, mask = _inputs()
    with torch.no_grad():
        base = model(ids, feats, pos, mask)
        other_image = model(ids, feats.flip(0), pos, mask)
        padded = ids.clone()
        padded[0, 5:] = 7                                                  # change padding only
        repad = model(padded, feats, pos, mask)
        text_alone = model._encode(model.embeddings(ids), mask.bool()[:, None, None, :])
    assert not torch.allclose(base.text_hidden, other_image.text_hidden)  # text reads the image
    assert not torch.allclose(base.patch_hidden, other_image.patch_hidden)
    # before the co-attention the text stream is the BERT layers on the text alone
    model.co_layers = torch.nn.ModuleList()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, feats, pos, mask).text_hidden, text_alone)
    torch.testing.assert_close(repad.last_hidden_state[0, :5], base.last_hidden_state[0, :5])
    torch.testing.assert_close(repad.patch_hidden, base.patch_hidden)


def test_the_captioning_mask_holds_in_both_streams():
    model = _model()
    ids, feats, pos, _ = _inputs()
    pattern = seq2seq_pattern(T, P)
    with torch.no_grad():
        base = model(ids, feats, pos, attention_pattern=pattern)
        later = ids.clone()
        later[:, 4:] = 5                                                   # change tokens 4..
        changed = model(later, feats, pos, attention_pattern=pattern)
    torch.testing.assert_close(changed.text_hidden[:, :4], base.text_hidden[:, :4])  # 0..3 never see them
    torch.testing.assert_close(changed.patch_hidden, base.patch_hidden)   # patches never see the text
    assert not torch.allclose(changed.text_hidden[:, 4:], base.text_hidden[:, 4:])


def test_a_query_allowed_no_key_gets_no_cross_attention_update_and_finite_gradients():
    torch.manual_seed(0)
    block = CoAttentionBlock(_model().config).eval()
    x = torch.randn(2, 4, 32, requires_grad=True)
    other = torch.randn(2, 6, 32)
    none = torch.zeros(2, 4, 6, dtype=torch.bool)
    out = block(x, other, none)
    expected = block.attention_norm(x + block.attention_out.bias)  # zero context: only the output bias
    expected = block.output_norm(expected + block.output(block.act(block.intermediate(expected))))
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert not torch.allclose(block(x, other, ~none), out)                # with keys it does attend


def test_save_and_load_keep_a_two_stream_model(tmp_path):
    model = _model()
    ids, feats, pos, mask = _inputs()
    model.save_pretrained(tmp_path / "m")
    again = create_model(pretrained=str(tmp_path / "m")).eval()
    assert again.config.architecture == "two_stream" and len(again.co_layers) == 2
    with torch.no_grad():
        torch.testing.assert_close(again(ids, feats, pos, mask).pooled, model(ids, feats, pos, mask).pooled)
    with pytest.raises(ValueError, match="architecture must be one of"):
        create_model("tiny", architecture="three_stream")


def test_pretrain_finetune_eval_two_stream(pretrain_data, tmp_path):
    d = pretrain_data
    data = ["--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]),
            "--cache", str(d["cache"]), "--split-file", str(d["split"])]
    two = ["model.architecture=two_stream", "model.image_layers=1", "model.co_attention_layers=1"]
    pre = tmp_path / "pre"
    assert main(["pretrain", "--config", "tiny", *data, "--out", str(pre), "train.max_steps=2", *two]) == 0
    assert json.loads((pre / "final" / "config.json").read_text())["architecture"] == "two_stream"
    assert main(["finetune", "retrieval", "--from", str(pre / "final"), "--config", "tiny", *data,
                 "--out", str(tmp_path / "ft" / "retrieval"), "train.max_steps=2"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "ft"), *data, "--split", "train", "--json", str(out),
                 "kb101.queries=4", "kb101.negatives=6", "kb101.draws=1", "full_catalog=4"]) == 0
    r = json.loads(out.read_text())["retrieval"]
    assert r["pairs_scored"] > 0 and r["ITR"]["R@1"] <= r["ITR"]["R@10"]


def test_the_fast_scorer_and_the_inspector_are_single_stream_only():
    from kaleido.demo.inspect import patch_attention
    from kaleido.evaluation.scorer import has_fast_path
    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask

    two = RetrievalTask(_model(), RetrievalConfig())
    assert not has_fast_path(two)  # scored by the full forward pass, not the single-stream shortcut
    assert has_fast_path(RetrievalTask(create_model("tiny"), RetrievalConfig()))
    with pytest.raises(ValueError, match="two_stream"):
        patch_attention(two, {})


def test_the_vilbert_preset_is_two_stream_with_vilberts_tasks():
    from kaleido.config import load_config
    from kaleido.pretrain.config import PretrainConfig

    cfg = load_config(PretrainConfig, "vilbert", component="pretrain")
    assert cfg.model.architecture == "two_stream" and cfg.model.validate()
    assert set(cfg.tasks.weights()) == {"amlm", "itm", "itc", "b2cm"} and cfg.masking.strategy == "random"
