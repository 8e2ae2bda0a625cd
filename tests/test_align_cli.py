"""End to end on 12 sample products: tiny SAT + tiny patch cache -> `kaleido align build/show/measure`."""

import json

import pytest

from kaleido.alignment.store import read_records
from kaleido.cli import main

PATCHES = ["patches.use_saliency=false", "patches.backbone.input_size=64",
           "patches.backbone.shared_input_size=96", "shard_size=5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import shutil

    import pandas as pd

    from tests.conftest import SAMPLE

    root = tmp_path_factory.mktemp("align")
    table = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False).head(12)
    (root / "cat" / "images").mkdir(parents=True)
    for rel in table["image"]:
        shutil.copyfile(SAMPLE / rel, root / "cat" / rel)
    table.to_csv(root / "cat" / "products.csv", index=False)
    cat = str(root / "cat")
    assert main(["data", "split", cat, "--out", str(root / "split")]) == 0
    assert main(["patches", "extract", "--catalog", cat, "--out", str(root / "cache"), *PATCHES]) == 0
    assert main(["sat", "train", "--catalog", cat, "--split-file", str(root / "split"),
                 "--out", str(root / "sat"), "--config", "tiny"]) == 0
    return root, table


def test_build_show_measure(run, capsys):
    root, table = run
    cat, cache = str(root / "cat"), str(root / "cache")
    args = ["--catalog", cat, "--cache", cache]
    assert main(["align", "build", *args, "--sat", str(root / "sat"), "beam_size=1"]) == 0
    records = read_records(root / "cache")
    assert set(records) == set(table["id"])
    assert sum(len(r["pairs"]) for r in records.values()) > 0
    for pid, record in records.items():
        title = table.set_index("id").loc[pid, "productDisplayName"].lower()
        for pair in record["pairs"]:  # every aligned word is in the title, on levels 3-5
            assert pair["word"] in title.replace("-", "").replace("'", "")
            assert pair["level"] in (3, 4, 5) and 0 < pair["score"] <= 1

    # resumable: a second build has nothing left to do
    assert main(["align", "build", *args, "--sat", str(root / "sat")]) == 0
    assert "0 products aligned (12 already done)" in capsys.readouterr().out

    pid = table["id"].iloc[0]
    assert main(["align", "show", pid, *args, "--out", str(root / "show.png")]) == 0
    assert (root / "show.png").stat().st_size > 0
    assert main(["align", "measure", *args, "--no-foreground", "--json", str(root / "q.json")]) == 0
    q = json.loads((root / "q.json").read_text())
    assert q["products"] == 12 and 0 <= q["with_pairs"] <= 1


def test_extract_one_split_only(run):
    from kaleido.data import read_split
    from kaleido.patches.cache import FeatureCache

    root, _ = run
    out = root / "cache_test"
    assert main(["patches", "extract", "--catalog", str(root / "cat"), "--out", str(out),
                 "--split-file", str(root / "split"), "--split", "test", *PATCHES]) == 0
    split = read_split(root / "split")
    assert set(FeatureCache(out).ids) == {pid for pid, s in split.items() if s == "test"}
    assert main(["patches", "extract", "--catalog", str(root / "cat"), "--out", str(out),
                 "--split", "test", *PATCHES]) == 2  # --split without --split-file
