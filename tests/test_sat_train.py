"""End to end on 40 products of the bundled sample with the ``tiny`` preset (64 px, 2 x 2 grid)."""

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from kaleido.cli import main
from kaleido.config import load_config
from kaleido.data import load_catalog, read_split
from sat_captioner import CaptionResult, Captioner, SATTrainConfig, load_sat, train_sat

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny decoder: a 2nd thread on a busy 2-core box only costs
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    """40 products (20 Topwear, 20 Shoes: every split gets both), images left in data/sample."""
    table = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False)
    table = pd.concat([table[table.subCategory == c].head(20) for c in ("Topwear", "Shoes")])
    table["image"] = [str(SAMPLE / p) for p in table["image"]]
    folder = tmp_path_factory.mktemp("sat_catalog")
    table.to_csv(folder / "products.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def run(catalog_dir, tmp_path_factory):
    """``kaleido sat train`` for 2 tiny epochs, no split file given."""
    out = tmp_path_factory.mktemp("sat_run")
    assert main(["sat", "train", "--catalog", str(catalog_dir), "--out", str(out),
                 "--config", "tiny"]) == 0
    return out


def _log(out):
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_train_writes_model_config_vocab_log_and_curve(run):
    for name in ("model.safetensors", "config.yaml", "vocab.json", "last.pt", "log.csv",
                 "loss_curve.png", "catalog.yaml", "split/split.csv"):
        assert (run / name).is_file(), name
    rows = _log(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["train_caption_loss"]) < float(rows[0]["train_caption_loss"])
    assert "val_bleu4" in rows[0]
    assert load_config(SATTrainConfig, run / "config.yaml").model.encoder_input_size == 64
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "rng"} <= set(ckpt)


def test_resume_continues_at_the_next_epoch_like_an_uninterrupted_run(run, catalog_dir, tmp_path):
    before = _log(run)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert main(["sat", "train", "--catalog", str(catalog_dir), "--out", str(resumed),
                 "--split-file", str(run / "split"), "--config", "tiny", "epochs=3"]) == 0
    after = _log(resumed)
    assert [r["epoch"] for r in after] == ["1", "2", "3"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in after[:2]] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in before]

    # the same 3 epochs in one go (features cache copied: it is keyed, so reused)
    fresh = tmp_path / "fresh"
    (fresh / "features").mkdir(parents=True)
    for f in (run / "features").iterdir():
        shutil.copy(f, fresh / "features" / f.name)
    cfg = load_config(SATTrainConfig, "tiny", ["epochs=3"], component="sat")
    result = train_sat(load_catalog(catalog_dir), read_split(run / "split"), cfg, fresh)
    assert result.history[-1]["train_caption_loss"] == pytest.approx(
        float(after[-1]["train_caption_loss"]), rel=1e-6)


def test_load_sat_and_caption_an_image(run, catalog_dir):
    decoder, vocab, cfg = load_sat(run)
    assert cfg.encoder_input_size == 64 and decoder.vocab_size == len(vocab)
    captioner = Captioner.from_pretrained(run)
    catalog = load_catalog(catalog_dir)
    image = catalog.load_image(catalog.products[0])
    [result] = captioner.caption([image], beam_size=2)
    assert isinstance(result, CaptionResult)
    assert len(result.words) == len(result.token_ids) == result.attention.shape[0]
    assert result.attention.shape[1:] == (2, 2) == captioner.grid
    if len(result.words):
        assert torch.allclose(result.attention.sum(dim=(1, 2)), torch.ones(len(result.words)))
    [boxed] = captioner.caption([image], beam_size=2, boxes=[(20, 10, 200, 220)])
    assert boxed.attention.shape[1:] == (2, 2)


def test_cli_caption_writes_a_picture_and_skips_bad_images(run, catalog_dir, tmp_path, capsys):
    image = pd.read_csv(catalog_dir / "products.csv")["image"][0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "pictures"
    assert main(["sat", "caption", image, str(bad), "--model", str(run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "skipped" in text and "broken.jpg" in text
    picture = out / (image.rsplit("/", 1)[1].rsplit(".", 1)[0] + "_attention.png")
    assert picture.is_file() and picture.stat().st_size > 1000


def test_cli_eval_prints_and_writes_scores(run, catalog_dir, tmp_path, capsys):
    target = tmp_path / "eval.json"
    assert main(["sat", "eval", "--model", str(run), "--catalog", str(catalog_dir),
                 "--split-file", str(run / "split"), "--split", "test", "--no-meteor",
                 "--json", str(target), "--beam-size", "2"]) == 0
    text = capsys.readouterr().out
    assert "BLEU-4" in text and "CIDEr" in text
    payload = json.loads(target.read_text())
    assert payload["products"] == 4 and payload["scores"]["METEOR"] is None
    assert set(payload["scores"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                                      "ROUGE-L", "CIDEr"}
