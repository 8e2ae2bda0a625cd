import pickle

import h5py
import numpy as np
import pytest

from kaleido.data import CatalogError, FashionGenWriter, export_fashiongen, load_catalog
from kaleido.data.fashiongen import load_fashiongen_catalog


def _image(value: int, size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


@pytest.fixture
def fashiongen_file(tmp_path):
    """7 rows, 4 products: one with 3 non-adjacent poses, invalid UTF-8, an empty title."""
    path = tmp_path / "fashiongen_train.h5"
    rows = [  # (product id, pixel value, name, description, subcategory)
        (101, 10, "Black leather biker jacket", "Zip closure.", "JACKETS"),
        (202, 20, b"Caf\xe9 cr\xe8me knit sweater", b"Wool \x96 cashmere", "SWEATERS"),
        (101, 11, "Black leather biker jacket", "Zip closure.", "JACKETS"),
        (303, 30, "", "no title here", "SHIRTS"),
        (404, 40, "White sneakers", "Low top \xe9t\xe9 edition", "SNEAKERS"),
        (101, 12, "Black leather biker jacket", "Zip closure.", "JACKETS"),
        (202, 21, b"Caf\xe9 cr\xe8me knit sweater", b"Wool \x96 cashmere", "SWEATERS"),
    ]
    with FashionGenWriter(path, image_size=32) as w:
        for pid, value, name, desc, sub in rows:
            w.add(_image(value), product_id=pid, name=name, description=desc,
                  category="CLOTHING", subcategory=sub, gender="MEN", pose=f"id_{value % 10}")
    return path


def test_products_grouped_by_id_across_chunks(fashiongen_file):
    catalog = load_fashiongen_catalog(fashiongen_file, chunk_rows=2)  # force chunk boundaries
    assert [p.id for p in catalog] == ["101", "202", "404"]
    assert catalog["101"].images == (0, 2, 5) and catalog["202"].images == (1, 6)
    assert catalog.report.rows == 7
    assert catalog.report.skipped == {"empty title": 1}
    assert catalog["101"].subcategory == "JACKETS" and catalog["101"].attributes["gender"] == "MEN"
    pixels = [np.asarray(catalog.store.load(r))[0, 0, 0] for r in catalog["101"].images]
    assert pixels == [10, 11, 12]


def test_non_utf8_strings_are_decoded_and_counted(fashiongen_file):
    catalog = load_catalog(fashiongen_file)
    sweater = catalog["202"]
    assert sweater.title == "Café crème knit sweater"
    assert sweater.description == "Wool \u2013 cashmere"  # cp1252 0x96 is an en dash
    assert catalog["404"].description == "Low top été edition"  # valid UTF-8 left alone
    (reason, n), = catalog.report.repaired.items()
    assert "non-UTF-8" in reason and n == 2  # title and description of 202, first row only


def test_file_layout_matches_the_fashiongen_schema(fashiongen_file):
    with h5py.File(fashiongen_file) as h5:
        assert h5["input_image"].shape == (7, 32, 32, 3) and h5["input_image"].dtype == np.uint8
        assert h5["input_name"].shape == (7, 1) and h5["input_productID"].shape == (7, 1)
        assert isinstance(h5["input_name"][1, 0], bytes)


def test_store_pickles_for_dataloader_workers(fashiongen_file):
    catalog = load_catalog(fashiongen_file)
    catalog.load_image(catalog["101"])  # opens the file
    store = pickle.loads(pickle.dumps(catalog.store))
    assert np.asarray(store.load(4))[0, 0, 0] == 40


def test_missing_keys_are_named(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        h5["input_image"] = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(CatalogError, match=r"missing Fashion-Gen key\(s\) \['input_productID'"):
        load_catalog(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CatalogError, match="cannot open as HDF5"):
        load_catalog(tmp_path / "junk.h5")


def test_export_round_trip_from_the_sample(sample_dir, tmp_path):
    catalog = load_catalog(sample_dir)
    subset = catalog.products[:5]
    export_fashiongen(catalog, tmp_path / "fg.h5", image_size=64, products=subset, progress=False)
    back = load_catalog(tmp_path / "fg.h5")
    assert [p.id for p in back] == [p.id for p in subset]
    assert [p.title for p in back] == [p.title for p in subset]
    assert back.products[0].subcategory == subset[0].subcategory.upper()
    original = np.asarray(catalog.load_image(subset[0]).resize((64, 64)), dtype=np.float32)
    exported = np.asarray(back.load_image(back.products[0]), dtype=np.float32)
    assert np.abs(original - exported).mean() < 8  # same picture, resampled and re-encoded
