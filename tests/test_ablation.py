"""`kaleido ablate` on the tiny preset: every row runs, the summary has a line per row, reruns resume."""

import json

import pytest

from kaleido.ablation import TASK_ROWS, AblationRow, row_overrides
from kaleido.cli import main


@pytest.mark.parametrize("preset", ["table4", "kpg-masking", "systems", "tiny"])
def test_every_shipped_row_resolves_to_valid_configs(preset):
    """Each row of a shipped ablation preset builds its pre-training and fine-tuning configs (a typo
    in a row's overrides fails here, not an hour into a run)."""
    from kaleido.ablation import AblationConfig
    from kaleido.config import load_config
    from kaleido.finetune import FinetuneConfig
    from kaleido.pretrain import PretrainConfig

    cfg = load_config(AblationConfig, preset, component="ablate")
    assert cfg.rows
    for row in cfg.rows:
        if row.checkpoint:
            continue
        pcfg = load_config(PretrainConfig, row.preset, [*cfg.pretrain, *row_overrides(row)], component="pretrain")
        for override in row.overrides:   # the row's own settings are the ones in effect
            key, value = override.split("=", 1)
            node = pcfg
            for part in key.split("."):
                node = getattr(node, part)
            assert str(node) == value, (row.name, override)
        mining = [f"retrieval.first_stage={cfg.dual}"] if cfg.dual else []   # as run_ablation adds it
        load_config(FinetuneConfig, cfg.finetune_preset, [*cfg.finetune, *mining, *row.finetune_overrides],
                    component="finetune")
    load_config(FinetuneConfig, cfg.finetune_preset, cfg.caption, component="finetune")


def test_the_systems_experiment_row_differs_from_vilbert_only_in_the_architecture():
    from kaleido.ablation import AblationConfig
    from kaleido.config import load_config
    from kaleido.pretrain import PretrainConfig

    cfg = load_config(AblationConfig, "systems", component="ablate")
    rows = {r.name: r for r in cfg.rows}
    resolved = {name: load_config(PretrainConfig, rows[name].preset, [*cfg.pretrain, *row_overrides(rows[name])],
                                  component="pretrain")
                for name in ("ViLBERT-style", "Kaleido-BERT, ViLBERT's tasks")}
    vilbert, single = resolved["ViLBERT-style"], resolved["Kaleido-BERT, ViLBERT's tasks"]
    assert single.tasks.weights() == vilbert.tasks.weights()
    assert single.masking.strategy == vilbert.masking.strategy == "random"
    assert vilbert.model.architecture == "two_stream" and single.model.architecture != "two_stream"
    assert single.train == vilbert.train


def test_task_rows_switch_the_right_heads():
    from kaleido.config import load_config
    from kaleido.pretrain import PretrainConfig

    on = {}
    for name in TASK_ROWS:
        cfg = load_config(PretrainConfig, "default", row_overrides(AblationRow(tasks=name)), component="pretrain")
        on[name] = set(cfg.tasks.weights())
    base = {"amlm", "itm", "itc"}  # the default preset's matching: ITC stays on in every row
    assert on["B"] == base
    assert on["B+I~III"] == base | {"rr", "jps", "cp"}
    assert on["B+V"] == base | {"b2cm"}
    assert len(on["B+I~V"]) == 8
    with pytest.raises(ValueError, match="unknown tasks"):
        row_overrides(AblationRow(name="x", tasks="B+X"))


def test_tiny_ablation_runs_every_row_and_resumes(pretrain_data, tmp_path, capsys):
    d = pretrain_data
    args = ["ablate", "--config", "tiny", "--catalog", str(d["catalog_dir"]), "--image-root",
            str(d["image_root"]), "--cache", f"kaleido-saliency={d['cache']}", "--split-file", str(d["split"]),
            "--split", "test", "--out", str(tmp_path / "abl"), "evaluate=[kb101.queries=2,kb101.negatives=2,"
            "kb101.draws=1,full_catalog=0]"]
    kpg = ["ablate", "--config", "kpg-masking", *args[3:11], "--out", str(tmp_path / "kpg")]
    assert main(kpg) == 2  # its rows need the kaleido and fixed-grid caches: a clear error, nothing run
    assert "fixed-grid" in capsys.readouterr().err
    assert main(args) == 0
    summary = (tmp_path / "abl" / "summary.md").read_text()
    assert "masking: random" in summary and "tasks: B+V" in summary
    row = json.loads((tmp_path / "abl" / "masking-random" / "eval.json").read_text())
    assert row["retrieval"]["draws"] == 1
    assert "transformers" in row["environment"]["packages"]   # what the figures were made with
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds every row evaluated
    assert (tmp_path / "abl" / "summary.md").read_text() == summary


def test_systems_rows_at_one_budget(pretrain_data, dual_dir, reranker_dir, tmp_path, capsys):
    """The issue-17 shape of a run: one multitask encoder per row with negatives mined from the first
    stage, a two-stage row pre-trained from another run (ImageBERT), a row trained elsewhere (the
    release) that is only evaluated, all measured as two-stage systems on the same draws."""
    import yaml

    d = pretrain_data
    data = ["--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]), "--split-file", str(d["split"])]
    stage1 = tmp_path / "stage1"
    assert main(["pretrain", "--config", "tiny", *data, "--cache", str(d["cache"]), "--out", str(stage1),
                 "train.max_steps=2"]) == 0
    cfg = {"rows": [{"name": "single", "preset": "tiny"},
                    {"name": "two-stage", "preset": "tiny", "init": str(stage1 / "final"), "cache": "other"},
                    {"name": "trained elsewhere", "checkpoint": str(reranker_dir)}],
           "pretrain": ["train.max_steps=2"], "finetune_preset": "tiny", "finetune_task": "multitask",
           "finetune": ["multitask.tasks=[retrieval,category]", "retrieval.mining=first_stage", "train.max_steps=2"],
           "dual": str(dual_dir), "dual_cache": "kaleido-saliency",
           "evaluate": ["kb101.queries=2", "kb101.negatives=2", "kb101.draws=1", "full_catalog=0", "meteor=false",
                        "exhaustive=false", "rerank_k=2"]}
    preset = tmp_path / "systems.yaml"
    preset.write_text(yaml.safe_dump(cfg))
    other = tmp_path / "other-cache"   # another name for the same features: the routing is what is tested
    other.symlink_to(d["cache"], target_is_directory=True)
    args = ["ablate", "--config", str(preset), *data, "--cache", f"kaleido-saliency={d['cache']}",
            "--cache", f"other={other}", "--split", "test", "--out", str(tmp_path / "sys")]
    assert main(args) == 0
    summary = (tmp_path / "sys" / "summary.md").read_text()
    kb101 = summary.split("## KB-101")[1].split("## ")[0]
    assert kb101.count("| first stage (same draws) |") == 1            # shared rows appear once per table
    for name in ("single", "two-stage", "trained elsewhere"):
        assert f"| first stage top 2 + {name} ITM |" in kb101
    itm = summary.split("## ITM")[1].split("## ")[0]
    assert "| single ITM alone |" in itm and "| trained elsewhere ITM alone |" in itm
    table3 = summary.split("## Category")[1].split("## Budget")[0]
    assert "| single |" in table3 and "| two-stage |" in table3 and "trained elsewhere" not in table3
    row = json.loads((tmp_path / "sys" / "two-stage" / "eval.json").read_text())
    assert row["budget"]["pretrain_steps"] == 2 and row["budget"]["finetune_steps"] == 2
    assert row["budget"]["init"] == str(stage1 / "final") and row["budget"]["init_steps"] == 2
    assert "accuracy" in row["category"] and row["protocol"]["evaluate"]["dual_cache"] == str(d["cache"])
    # the row on the other cache mined from the first stage's cache, not its own
    mined = yaml.safe_load((tmp_path / "sys" / "two-stage" / "multitask" / "config.yaml").read_text())
    assert mined["retrieval"]["first_stage_cache"] == str(d["cache"])
    assert f"2 after 2 steps of {stage1 / 'final'}" in summary
    assert "trained elsewhere: " in summary and (tmp_path / "sys" / "single" / "multitask" / "final").is_dir()
    # a row added later and left out by only=: not trained, the evaluated rows stay in the summary
    preset.write_text(yaml.safe_dump({**cfg, "rows": [*cfg["rows"], {"name": "later", "preset": "tiny"}],
                                      "only": ["single"]}))
    assert main(args) == 0
    assert (tmp_path / "sys" / "summary.md").read_text() == summary and not (tmp_path / "sys" / "later").exists()
    preset.write_text(yaml.safe_dump({**cfg, "only": ["nope"]}))
    assert main(args) == 2 and "no such row" in capsys.readouterr().err
    # another evaluation protocol: the evaluated rows are measured again, never mixed with the old ones
    preset.write_text(yaml.safe_dump({**cfg, "evaluate": [*cfg["evaluate"], "fusion_weights=[1.0]"],
                                      "only": ["single"]}))
    assert main(args) == 2 and "another protocol" in capsys.readouterr().err
    # mining from a first stage that was not given: refused before anything runs
    preset.write_text(yaml.safe_dump({**cfg, "dual": ""}))
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "sys2")]) == 2
    assert "dual=PATH" in capsys.readouterr().err and not (tmp_path / "sys2").exists()
    # captioning added later: only the rows named get a caption head fine-tuned from their own
    # pre-trained encoder (a checkpoint row from the one it names); the rest of each row's
    # evaluation stays as it was; a rerun trains nothing
    before = json.loads((tmp_path / "sys" / "single" / "eval.json").read_text())
    rows = [*cfg["rows"][:2], {**cfg["rows"][2], "caption_init": str(stage1 / "final")}]
    preset.write_text(yaml.safe_dump({**cfg, "rows": rows, "caption": ["train.max_steps=2", "caption.max_len=4"],
                                      "only": ["single", "trained elsewhere"]}))
    assert main(args) == 0
    row = json.loads((tmp_path / "sys" / "single" / "eval.json").read_text())
    # (measured again under this protocol, the earlier call's fusion weights gone; the same training)
    assert row["retrieval"]["itm"] == before["retrieval"]["itm"] and row["category"] == before["category"]
    assert row["budget"]["caption_steps"] == 2 and set(row["caption"]["scores"]) >= {"BLEU-4", "CIDEr"}
    assert row["caption_recipe"] == ["train.max_steps=2", "caption.max_len=4"]
    captioned = yaml.safe_load((tmp_path / "sys" / "single" / "caption" / "config.yaml").read_text())
    assert captioned["train"]["max_steps"] == 2
    summary = (tmp_path / "sys" / "summary.md").read_text()
    table3 = summary.split("## Category")[1].split("## Budget")[0]
    single = next(line for line in table3.splitlines() if line.startswith("| single |"))
    two = next(line for line in table3.splitlines() if line.startswith("| two-stage |"))
    assert single.count(" - ") == 0 and two.count(" - ") == 4               # captioned / left for later
    assert "caption steps" in summary.split("## Budget")[1]
    assert not (tmp_path / "sys" / "two-stage" / "caption").exists()
    elsewhere = json.loads((tmp_path / "sys" / "trained-elsewhere" / "eval.json").read_text())
    assert elsewhere["budget"]["caption_init"] == str(stage1 / "final") and "BLEU-4" in elsewhere["caption"]["scores"]
    assert main(args) == 0 and (tmp_path / "sys" / "summary.md").read_text() == summary


def test_a_row_trains_the_same_after_other_rows_in_its_process(pretrain_data, tmp_path):
    """A row's weights do not depend on the rows trained before it in the same `kaleido ablate`
    process: the same row alone, in a fresh process, gives the same weights bit for bit."""
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    d = pretrain_data
    common = ["--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]),
              "--cache", f"kaleido-saliency={d['cache']}", "--split-file", str(d["split"]), "--split", "test",
              "evaluate=[kb101.queries=2,kb101.negatives=2,kb101.draws=1,full_catalog=0]",
              "pretrain=[train.max_steps=4]", "finetune=[train.max_steps=3]"]
    assert main(["ablate", "--config", "tiny", *common, "--out", str(tmp_path / "both")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run([sys.executable, "-m", "kaleido.cli", "ablate", "--config", "tiny", *common,
                    "--out", str(tmp_path / "alone"), 'only=["tasks: B+V"]'], check=True, env=env,
                   capture_output=True)
    for part in ("pretrain/final/model.safetensors", "retrieval/final/model.safetensors"):
        a = load_file(str(tmp_path / "both" / "tasks-b-v" / part))
        b = load_file(str(tmp_path / "alone" / "tasks-b-v" / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
