import random

import pytest

from kaleido.data import (Catalog, CatalogError, LoadReport, Product, SplitConfig, assign_splits,
                          load_catalog, read_split, split_catalog, write_split)


def _catalog(products):
    return Catalog(list(products), store=None, report=LoadReport(source="test"))


def _products(n_per_cat):
    out = []
    for cat, n in n_per_cat.items():
        out += [Product(id=f"{cat}{i}", title="t", images=("a.jpg", "b.jpg"), category=cat)
                for i in range(n)]
    return out


def test_split_is_deterministic_stratified_and_order_independent():
    products = _products({"Tops": 100, "Shoes": 40, "Ties": 1})
    a = assign_splits(_catalog(products))
    shuffled = products[:]
    random.Random(0).shuffle(shuffled)
    assert assign_splits(_catalog(shuffled)) == a
    tops = [a[p.id] for p in products if p.category == "Tops"]
    assert (tops.count("train"), tops.count("val"), tops.count("test")) == (80, 10, 10)
    assert a["Ties0"] == "train"  # a category of one goes to train
    other = assign_splits(_catalog(products), SplitConfig(seed=1))
    assert other != a and sorted(other.values()) == sorted(a.values())


def test_every_image_of_a_product_follows_it(sample_dir, tmp_path):
    catalog = load_catalog(sample_dir)
    path = write_split(catalog, tmp_path)
    split = read_split(path)
    parts = {s: split_catalog(catalog, split, s) for s in ("train", "val", "test")}
    ids = [set(p.id for p in c) for c in parts.values()]
    assert sum(map(len, ids)) == len(catalog) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert read_split(tmp_path) == split  # folder or file


def test_bad_split_inputs():
    with pytest.raises(ValueError, match="split fractions"):
        SplitConfig(train=0.9, val=0.2)
    with pytest.raises(ValueError, match="stratify_by"):
        SplitConfig(stratify_by="colour")


def test_split_file_for_another_catalog_is_refused(sample_dir, tmp_path):
    catalog = load_catalog(sample_dir)
    small = catalog.subset(p.id for p in catalog.products[:10])
    write_split(small, tmp_path)
    with pytest.raises(CatalogError, match="not in the split file"):
        split_catalog(catalog, read_split(tmp_path), "train")
    (tmp_path / "split.csv").write_text("id,split\n1,training\n")
    with pytest.raises(CatalogError, match="unknown split names"):
        read_split(tmp_path)


def test_an_overlapping_catalog_keeps_the_other_split(sample_dir, tmp_path):
    """fashion-products-lowres shares ids with fashion-products: with --keep, the other's val / test
    products keep their split, so stage-1 pre-training on the train split never sees them."""
    from kaleido.cli import main

    catalog = load_catalog(sample_dir)
    small = catalog.subset(p.id for p in catalog.products[:40])
    other = read_split(write_split(small, tmp_path / "other"))
    assert main(["data", "split", str(sample_dir), "--out", str(tmp_path / "big"),
                 "--keep", str(tmp_path / "other"), "split.train=0.98", "split.val=0.01"]) == 0
    big = read_split(tmp_path / "big")
    assert all(big[pid] == split for pid, split in other.items())
    held = [pid for pid, split in other.items() if split != "train"]
    assert held and not set(held) & {p.id for p in split_catalog(catalog, big, "train")}
    import json
    meta = json.loads((tmp_path / "big" / "split.json").read_text())
    assert meta["kept"] == {s: list(other.values()).count(s) for s in ("train", "val", "test")}
    # without it the same products are re-drawn and some of the other's test lands in train
    plain = read_split(write_split(catalog, tmp_path / "plain", SplitConfig(train=0.98, val=0.01)))
    assert any(plain[pid] == "train" for pid in held)
