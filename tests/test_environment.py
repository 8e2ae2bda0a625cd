"""What a run records of the software it ran under."""

import json

import torch

from kaleido import environment as env


def test_the_environment_names_the_libraries_that_move_the_numbers():
    now = env.environment()
    assert now["packages"]["torch"] == torch.__version__.split("+")[0]
    assert {"transformers", "numpy", "kaleido"} <= set(now["packages"])
    assert now["torch_threads"] == torch.get_num_threads() and now["python"].count(".") == 2


def test_a_run_resumed_under_other_libraries_records_both(tmp_path, monkeypatch, caplog):
    path = env.record_environment(tmp_path)
    env.record_environment(tmp_path, step=3)          # resumed, nothing changed: no new entry
    assert len(json.loads(path.read_text())) == 1

    real = env.environment
    monkeypatch.setattr(env, "environment",
                        lambda: {**real(), "packages": {**real()["packages"], "transformers": "9.9"}})
    with caplog.at_level("WARNING"):
        env.record_environment(tmp_path, step=7)
    entries = json.loads(path.read_text())
    assert [e["from_step"] for e in entries] == [0, 7] and entries[1]["packages"]["transformers"] == "9.9"
    assert "packages changed: transformers" in caplog.text
    path.write_text("{not json")                       # a torn file is started again, not a crash
    env.record_environment(tmp_path, step=8)
    assert len(json.loads(path.read_text())) == 1
