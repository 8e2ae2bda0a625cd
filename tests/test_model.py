"""Kaleido-BERT encoder: shapes, masks, attention implementations, weights in and out."""

import json

import pytest
import torch

from kaleido.model import (KaleidoBertConfig, KaleidoProcessor, create_model, list_models,
                           load_bert_weights, model_config)


def _inputs(cfg, b=2, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(input_ids=torch.randint(1000, 2000, (b, t), generator=g),
                patch_features=torch.rand(b, cfg.num_patches, cfg.feature_dim, generator=g),
                patch_positions=torch.rand(b, cfg.num_patches, 5, generator=g),
                attention_mask=torch.ones(b, t, dtype=torch.long))


def test_presets_and_output_shapes():
    assert {"tiny", "minilm", "base"} <= set(list_models())
    assert model_config("base").hidden_size == 768 and model_config("base").num_hidden_layers == 12
    model = create_model("tiny").eval()
    cfg = model.config
    out = model(**_inputs(cfg))
    assert out.last_hidden_state.shape == (2, 7 + 55, cfg.hidden_size)
    assert out.text_hidden.shape == (2, 7, cfg.hidden_size)
    assert out.patch_hidden.shape == (2, 55, cfg.hidden_size)
    assert out.pooled.shape == (2, cfg.hidden_size)
    assert torch.isfinite(out.last_hidden_state).all()


def test_padding_does_not_change_the_real_positions():
    model = create_model("tiny").eval()
    x = _inputs(model.config, b=1, t=5)
    padded = {k: v.clone() for k, v in x.items()}
    padded["input_ids"] = torch.cat([x["input_ids"], torch.zeros(1, 3, dtype=torch.long)], 1)
    padded["attention_mask"] = torch.cat([x["attention_mask"], torch.zeros(1, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        a, b = model(**x), model(**padded)
    assert torch.allclose(a.text_hidden, b.text_hidden[:, :5], atol=1e-5)
    assert torch.allclose(a.patch_hidden, b.patch_hidden, atol=1e-5)


def test_sdpa_and_eager_attention_agree(monkeypatch):
    torch.manual_seed(0)
    eager = create_model("tiny", attn_implementation="eager").eval()
    sdpa = create_model("tiny", attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    x = _inputs(eager.config)
    x["attention_mask"][1, 5:] = 0
    pattern = torch.ones(62, 62, dtype=torch.bool).tril()  # any pattern: both paths must match
    calls = []
    sdpa_fn = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or sdpa_fn(*a, **kw))
    with torch.no_grad():
        for kw in ({}, {"attention_pattern": pattern}):
            calls.clear()
            a = eager(**x, **kw).last_hidden_state
            assert not calls  # eager: BERT's matmuls, never PyTorch's fused attention
            b = sdpa(**x, **kw).last_hidden_state
            assert len(calls) == sdpa.config.num_hidden_layers  # sdpa: one call per layer
            assert torch.allclose(a, b, atol=1e-5)


def test_attention_pattern_is_respected():
    """Under a causal pattern the first token cannot see anything after it."""
    model = create_model("tiny").eval()
    x = _inputs(model.config, b=1, t=6)
    causal = torch.ones(61, 61, dtype=torch.bool).tril()
    y = {k: v.clone() for k, v in x.items()}
    y["input_ids"][0, 3:] = 1999
    with torch.no_grad():
        a = model(**x, attention_pattern=causal).last_hidden_state
        b = model(**y, attention_pattern=causal).last_hidden_state
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not torch.allclose(a[:, 3:6], b[:, 3:6], atol=1e-4)


def test_save_and_load_roundtrip(tmp_path):
    model = create_model("tiny").eval()
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "kaleido-bert"
    again = create_model("minilm", pretrained=tmp_path / "m").eval()  # a checkpoint wins over the preset
    x = _inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(**x).last_hidden_state, again(**x).last_hidden_state)


def test_minilm_weights_load_and_match_bert():
    from transformers import BertModel

    from kaleido.tokenizer import minilm_dir

    model = create_model("minilm", pretrained=True).eval()
    bert = BertModel.from_pretrained(str(minilm_dir())).eval()
    ids = torch.tensor([[101, 2304, 2329, 102]])
    with torch.no_grad():
        ours = model.encoder(model.embeddings(ids)).last_hidden_state
        theirs = bert(ids).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_model_for_patches_loads_minilm_weights_for_another_cache():
    # `kaleido finetune --from minilm` on a fixed-grid cache: the preset's weights, the cache's patch layout
    from kaleido.model.factory import create_model_for_patches

    model = create_model_for_patches("minilm", True, feature_dim=32, grids=[8])
    reference = create_model("minilm", pretrained=True)
    assert (model.config.feature_dim, model.config.grids) == (32, [8])
    assert torch.equal(model.word_embeddings.weight, reference.word_embeddings.weight)
    with pytest.raises(ValueError, match="no offline weights"):
        create_model_for_patches("tiny", True, feature_dim=32, grids=[8])


def test_bad_weights_and_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no offline weights"):
        create_model("base", pretrained=True)
    with pytest.raises(ValueError, match="does not fit"):
        load_bert_weights(create_model("tiny"), "minilm")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        create_model("tiny", pretrained=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="multiple"):
        KaleidoBertConfig(hidden_size=30, num_attention_heads=4).validate()
    model = create_model("tiny")
    with pytest.raises(ValueError, match="patch features of shape"):
        x = _inputs(model.config)
        x["patch_features"] = x["patch_features"][:, :10]
        model(**x)


def test_processor_roundtrip(tmp_path):
    proc = KaleidoProcessor.default(max_text_len=8)
    batch = proc(["Nike Men Black T-Shirt with a very long title indeed", "red dress"])
    assert batch["input_ids"].shape == (2, 8)  # truncated to max_text_len
    assert batch["input_ids"][0, 0] == proc.tokenizer.cls_token_id
    assert batch["attention_mask"][1].sum() < 8
    proc.save_pretrained(tmp_path / "p")
    again = KaleidoProcessor.from_pretrained(tmp_path / "p")
    assert again.max_text_len == 8 and again.grids == [1, 2, 3, 4, 5]
    assert torch.equal(again(["red dress"])["input_ids"], proc(["red dress"])["input_ids"])
