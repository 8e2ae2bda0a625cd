import json

import pandas as pd
import pytest

from kaleido.data import CatalogConfig, CatalogError, ColumnMapping, load_catalog
from kaleido.data.inspect import inspect_catalog


def test_sample_loads_with_the_fashion_products_preset(sample_dir):
    catalog = load_catalog(sample_dir)
    assert len(catalog) == 301
    p = catalog["15970"] if "15970" in catalog else catalog.products[0]
    assert p.title and p.category and p.subcategory and p.images
    assert {"baseColour", "usage"} <= set(p.attributes)
    assert len({q.category for q in catalog}) == 23
    assert len({q.subcategory for q in catalog}) == 60
    image = catalog.load_image(p)
    assert image.mode == "RGB" and image.size == (224, 224)


def test_missing_column_names_file_columns_and_mapping(small_catalog_dir):
    table = pd.read_csv(small_catalog_dir / "products.csv", dtype=str)
    table.rename(columns={"articleType": "article_type"}).to_csv(
        small_catalog_dir / "products.csv", index=False)
    with pytest.raises(CatalogError) as err:
        load_catalog(CatalogConfig(path=str(small_catalog_dir), columns="fashion-products"))
    msg = str(err.value)
    assert "products.csv" in msg and "'articleType'" in msg and "subcategory='articleType'" in msg
    with pytest.raises(CatalogError, match="no column preset fits"):  # auto finds nothing either
        load_catalog(small_catalog_dir)


def test_optional_attribute_columns_may_be_absent(small_catalog_dir):
    table = pd.read_csv(small_catalog_dir / "products.csv", dtype=str)
    table.drop(columns=["season", "gender"]).to_csv(small_catalog_dir / "products.csv", index=False)
    catalog = load_catalog(small_catalog_dir)  # the low-res layout
    assert len(catalog) == 12 and "season" not in catalog.products[0].attributes


def test_duplicate_ids_error_with_examples(small_catalog_dir):
    table = pd.read_csv(small_catalog_dir / "products.csv", dtype=str)
    table.loc[3, "id"] = table.loc[1, "id"]
    table.to_csv(small_catalog_dir / "products.csv", index=False)
    with pytest.raises(CatalogError, match=rf"1 duplicate product ids.*'{table.loc[1, 'id']}' x2"):
        load_catalog(small_catalog_dir)


def test_bad_rows_and_files_are_skipped_and_counted(small_catalog_dir):
    d = small_catalog_dir
    table = pd.read_csv(d / "products.csv", dtype=str, keep_default_na=False)
    table.loc[0, "productDisplayName"] = "   "
    table.loc[1, "productDisplayName"] = ""
    (d / table.loc[2, "image"]).unlink()                                   # missing file
    good = (d / table.loc[3, "image"]).read_bytes()
    (d / table.loc[3, "image"]).write_bytes(good[: len(good) // 3])         # truncated
    (d / table.loc[4, "image"]).write_bytes(b"<html>not found</html>")     # not an image
    table.to_csv(d / "products.csv", index=False)

    catalog = load_catalog(d)
    assert catalog.report.skipped == {"empty title": 2, "missing image file": 1}
    assert str(table.loc[2, "id"]) in catalog.report.examples["missing image file"][0]
    assert len(catalog) == 9

    seen = [p.id for p, _, _ in catalog.iter_images()]  # decoding skips the two broken files
    assert len(seen) == 7 and table.loc[3, "id"] not in seen and table.loc[4, "id"] not in seen

    result = inspect_catalog(catalog, progress=False)
    assert result["image_check"]["bad"] == 2
    assert {b["id"] for b in result["image_check"]["bad_examples"]} == {table.loc[3, "id"], table.loc[4, "id"]}
    json.dumps(result)  # serialisable for --json


def test_a_corrupt_image_late_in_a_long_catalog_does_not_stop_iteration(small_catalog_dir):
    d = small_catalog_dir
    table = pd.read_csv(d / "products.csv", dtype=str, keep_default_na=False)
    big = pd.concat([table] * 300, ignore_index=True)  # 3,600 rows sharing 12 files
    big["id"] = [str(i) for i in range(len(big))]
    big.loc[len(big) - 2, "image"] = "images/broken.jpg"
    (d / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    big.to_csv(d / "products.csv", index=False)
    catalog = load_catalog(d)
    ids = [p.id for p, _, _ in catalog.iter_images()]
    assert len(ids) == len(big) - 1 and ids[-1] == str(len(big) - 1)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_and_jsonl_match_csv(small_catalog_dir, fmt):
    d = small_catalog_dir
    table = pd.read_csv(d / "products.csv", dtype=str, keep_default_na=False)
    if fmt == "parquet":
        table.to_parquet(d / "products.parquet")
    else:
        table.to_json(d / "products.jsonl", orient="records", lines=True)
    csv = load_catalog(d / "products.csv")
    other = load_catalog(d / f"products.{fmt}")
    assert [p.id for p in other] == [p.id for p in csv]
    assert [(p.title, p.category, p.subcategory, p.images, p.attributes) for p in other] == \
        [(p.title, p.category, p.subcategory, p.images, p.attributes) for p in csv]


def test_explicit_mapping_and_multi_image_products(small_catalog_dir):
    d = small_catalog_dir
    src = pd.read_csv(d / "products.csv", dtype=str, keep_default_na=False)
    rows = [{"sku": f"A{i:03d}", "name": r.productDisplayName, "dept": r.subCategory,
             "kind": r.articleType, "photos": [r.image, src.image[(i + 1) % len(src)]],
             "colour": r.baseColour} for i, r in enumerate(src.itertuples())]
    pd.DataFrame(rows).to_json(d / "mine.jsonl", orient="records", lines=True)
    mapping = ColumnMapping(id="sku", title="name", category="dept", subcategory="kind",
                            image="photos", attributes=["colour"])
    catalog = load_catalog(CatalogConfig(path=str(d / "mine.jsonl"), column_mapping=mapping))
    assert catalog.products[0].id == "A000" and len(catalog.products[0].images) == 2
    assert catalog.products[0].attributes == {"colour": src.baseColour[0]}
    assert len(list(catalog.iter_images(all_views=True))) == 24


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "products.xlsx").write_text("x")
    with pytest.raises(CatalogError, match="unknown catalog format"):
        load_catalog(tmp_path / "products.xlsx")
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "nope.csv")
