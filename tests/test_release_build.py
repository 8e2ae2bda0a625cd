"""``kaleido release build`` / ``card``: a release folder assembled in float16 from trained runs,
and a model card written from a pipeline run folder (never typed by hand)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kaleido.cli import main
from kaleido.release import assemble
from kaleido.release.card import write_model_card


def _part(root, name, extra=None):
    folder = root / name
    folder.mkdir(parents=True)
    save_file({"w": torch.randn(4, 4), "ids": torch.arange(3)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(extra or {"kind": name}))
    (folder / "checkpoints").mkdir()                      # training leftovers: never released
    (folder / "checkpoints" / "state.pt").write_bytes(b"x" * 100)
    return folder


@pytest.fixture
def parts(tmp_path):
    dual = _part(tmp_path / "runs", "dual")
    tagger = _part(tmp_path / "runs", "tagger", {"features": {"captioner": ""}})
    matcher = _part(tmp_path / "runs", "matcher")
    meta = tmp_path / "runs" / "meta.json"
    meta.write_text(json.dumps({"config": {"grids": [1, 2, 3]}, "extras": False}))
    return dual, tagger, matcher, meta


def test_build_writes_float16_weights_and_the_patch_settings(parts, tmp_path, capsys):
    dual, tagger, matcher, meta = parts
    out = tmp_path / "release"
    assert main(["release", "build", "--out", str(out), "--dual", str(dual), "--tagger", str(tagger),
                 "--matcher", str(matcher), "--patches", str(meta)]) == 0
    assert "release: " in capsys.readouterr().out
    with safe_open(str(out / "dual" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("w").dtype == torch.float16 and f.get_tensor("ids").dtype == torch.int64
    assert json.loads((out / "patches.json").read_text()) == {"grids": [1, 2, 3]}
    assert not (out / "dual" / "checkpoints").exists() and (out / "matcher" / "config.json").is_file()

    # a rebuild replaces the release: nothing of an earlier build survives, not even a part left out now
    (out / "dual" / "stale.json").write_text("{}")
    (out / "README.md").write_text("# the card of the last build")
    assemble.assemble_release(out, dual, tagger, meta)
    assert not (out / "dual" / "stale.json").exists() and not (out / "matcher").exists()
    assert not (out / "README.md").exists() and (out / "tagger" / "model.safetensors").is_file()


def test_build_ships_the_tuned_backbone_in_float16(parts, tmp_path):
    dual, tagger, matcher, meta = parts
    weights = tmp_path / "runs" / "backbone.safetensors"
    save_file({"conv_head.weight": torch.randn(8, 4, 1, 1)}, str(weights), metadata={"timm_arch": "tf_efficientnet_lite0"})
    out = tmp_path / "release"
    assert main(["release", "build", "--out", str(out), "--dual", str(dual), "--tagger", str(tagger),
                 "--patches", str(meta), "--backbone", str(weights)]) == 0
    with safe_open(str(out / assemble.BACKBONE_WEIGHTS), "pt") as f:
        assert f.get_tensor("conv_head.weight").dtype == torch.float16
        assert f.metadata()["timm_arch"] == "tf_efficientnet_lite0"   # what loading it needs
    assemble.assemble_release(out, dual, tagger, meta)   # rebuilt without: no stale backbone serves the features
    assert not (out / "backbone").exists()
    with pytest.raises(FileNotFoundError, match="release part backbone"):
        assemble.assemble_release(out, dual, tagger, meta, backbone=tmp_path / "nope.safetensors")


def test_build_refuses_a_missing_part_or_an_oversized_release(parts, tmp_path, monkeypatch, capsys):
    dual, tagger, matcher, meta = parts
    assert main(["release", "build", "--out", str(tmp_path / "r"), "--dual", str(tmp_path / "nope"),
                 "--tagger", str(tagger), "--patches", str(meta)]) == 2
    assert "release part dual" in capsys.readouterr().err
    monkeypatch.setattr(assemble, "MAX_BYTES", 100)
    with pytest.raises(ValueError, match="over the 0 MB a release may take"):
        assemble.assemble_release(tmp_path / "r", dual, tagger, meta)
    bad = tmp_path / "bad-meta.json"
    bad.write_text(json.dumps({"parts": ["a"]}))
    with pytest.raises(ValueError, match="no patch config"):
        assemble.assemble_release(tmp_path / "r2", dual, tagger, bad)


def test_the_card_is_read_from_the_run(parts, tmp_path):
    dual, tagger, matcher, meta = parts
    run, release = tmp_path / "run", tmp_path / "run" / "release"
    assemble.assemble_release(release, dual, tagger, meta, matcher)
    (run / "stages").mkdir()
    (run / "pipeline.yaml").write_text("split: {}\npatches: {}\nrelease: {}\n")
    for name, wall in (("patches", 1260.0), ("split", 5.0)):
        (run / "stages" / f"{name}.json").write_text(json.dumps(
            {"wall_s": wall, "peak_mb": 2048.0, "headline": {"products": 7251}}))
    (run / "commands.log").write_text("kaleido pipeline --catalog C --out run\nkaleido pipeline --catalog C --out run\n")
    (run / "logs").mkdir()
    (run / "logs" / "release.log").write_text("$ kaleido eval --model old\nboom\n$ kaleido tagger eval --model x\n"
                                             "$ kaleido eval --model new\n")
    tagger_json = tmp_path / "tagger.json"
    tagger_json.write_text(json.dumps({"split": "test", "products": 725, "tagger": {
        "image": {"category": {"accuracy": 0.978, "macro_f1": 0.9, "ece": 0.01, "ece_uncalibrated": 0.02}}}}))
    card = write_model_card(run, release, "kaleido-test", tagger_json=tagger_json).read_text()
    assert card.startswith("# kaleido-test\n")
    assert "```bash\nkaleido pipeline --catalog C --out run\n```" in card
    lines = card.splitlines()
    # stages in the pipeline's order with their own wall time; the total is their sum
    split_row, patches_row = (next(i for i, l in enumerate(lines) if l.startswith(f"| {s} |")) for s in ("split", "patches"))
    assert split_row < patches_row and "| 21 min 00 s | 2,048 MB | products 7251 |" in lines[patches_row]
    assert "| total before this card | 21 min 05 s |" in card
    assert "`kaleido tagger eval --model x`" in card and "| category | image | - | 97.8 / 90.0 |" in card
    assert "| `dual` |" in card and "| `matcher` |" in card
    assert "Machine: " in card and "cores" in card
    assert "every part below was trained" in card and "earlier release" not in card
    reused = write_model_card(run, release, "kaleido-test", reused=[f"tagger={tagger}"]).read_text()
    assert "every part below but `tagger` was trained by that command" in reused
    assert f"- `tagger/`: `{tagger}`" in reused


FIXTURES = Path(__file__).parent / "fixtures"


def test_the_card_has_the_release_tables_beside_the_linear_reference(parts, tmp_path):
    """The eval branch on a real `kaleido eval --model --json` (from a tiny pipeline run) and a
    linear-probe result.json: Table 2 with the reference row, full catalog, ITM, Table 3."""
    dual, tagger, matcher, meta = parts
    run, release = tmp_path / "run", tmp_path / "run" / "release"
    assemble.assemble_release(release, dual, tagger, meta, matcher)
    (run / "baseline").mkdir()
    reference = json.loads((FIXTURES / "linear-probe-result.json").read_text())
    reference["category"]["image+title"]["accuracy"] = 0.9862
    (run / "baseline" / "result.json").write_text(json.dumps(reference))
    (run / "logs").mkdir()
    (run / "logs" / "release.log").write_text("$ kaleido release build --out x\n$ kaleido eval --model run/release "
                                             "--split test\nKB-101 ...\n")
    result = json.loads((FIXTURES / "release-eval-test.json").read_text())
    result["retrieval"]["dual"]["SumR"] = 431.25
    eval_json = tmp_path / "test.json"
    eval_json.write_text(json.dumps(result))
    card = write_model_card(run, release, "kaleido-test", eval_json=eval_json).read_text()
    assert "`kaleido eval --model run/release --split test`" in card and "release build" not in card
    table2 = [l for l in card.splitlines() if l.startswith("| ") and "431.2" in l]
    assert len(table2) == 1 and table2[0].startswith("| first stage")   # the dual encoder's own row, from this JSON
    assert any(l.startswith("| linear reference") and "450.0" in l for l in card.splitlines())
    assert "Full-catalog retrieval" in card and "ITM on clean pairs" in card
    assert any(l.startswith("| linear reference (image+title)") and "98.6" in l for l in card.splitlines())
    assert any(l.startswith("| tiny-release") and "80.0" in l for l in card.splitlines())   # category 0.8


def test_a_part_already_in_float16_is_copied_byte_for_byte(tmp_path, monkeypatch):
    """A part reused from an earlier release stays the same file (git stores it once)."""
    import safetensors.torch

    src, dst, cast = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_file({"w": torch.randn(4, 4).half(), "ids": torch.arange(3)}, str(src), metadata={"format": "pt"})
    with monkeypatch.context() as m:   # copied, never written again
        m.setattr(safetensors.torch, "save_file", lambda *a, **k: pytest.fail("re-saved an fp16 part"))
        assemble.to_fp16(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    save_file({"w": torch.randn(4, 4)}, str(cast))
    assemble.to_fp16(cast, dst)
    with safe_open(str(dst), "pt") as f:
        assert f.get_tensor("w").dtype == torch.float16
