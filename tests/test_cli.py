import json

from kaleido.cli import main


def test_data_inspect_and_split(sample_dir, tmp_path, capsys):
    assert main(["data", "inspect", str(sample_dir), "--json", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    assert "products  301" in out and "301 decoded, 0 bad" in out and "Tshirts" in out
    assert json.loads((tmp_path / "i.json").read_text())["products"] == 301

    assert main(["data", "split", str(sample_dir), "--out", str(tmp_path / "s"), "split.seed=3"]) == 0
    assert (tmp_path / "s" / "split.csv").is_file() and (tmp_path / "s" / "config.yaml").is_file()
    assert json.loads((tmp_path / "s" / "split.json").read_text())["config"]["seed"] == 3


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "products.csv").write_text("sku,name\n1,x\n")
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "kaleido: error:" in err and "products.csv" in err and "no column preset fits" in err


def test_to_fashiongen(sample_dir, tmp_path, capsys):
    out = tmp_path / "fg.h5"
    assert main(["data", "to-fashiongen", str(sample_dir), str(out), "--limit", "3",
                 "--image-size", "32"]) == 0
    assert main(["data", "inspect", str(out)]) == 0
    assert "products  3 (from 3 rows)" in capsys.readouterr().out
