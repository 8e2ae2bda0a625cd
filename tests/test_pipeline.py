"""``kaleido pipeline``: override routing, the stages it builds, and a real run on the tiny
config that is killed (``kill -9``) mid-way and finished by the same command."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kaleido.config import ConfigError, load_config
from kaleido.pipeline import PipelineConfig, build_stages, route_overrides

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def test_overrides_go_to_their_stage_or_to_the_pipeline():
    own, stages = route_overrides(["pretrain.train.max_steps=60", "finetune.tasks=[retrieval]",
                                   "dual.config=pooled", "eval.kb101.queries=10", "pretrain.tasks.itm=2"])
    assert own == ["finetune.tasks=[retrieval]", "dual.config=pooled"]
    assert stages == {"pretrain": ["train.max_steps=60", "tasks.itm=2"], "eval": ["kb101.queries=10"]}
    for bad in ("max_steps=3", "pretrainn.x=1", "pretrain=1"):
        with pytest.raises(ConfigError, match="<stage>.<key>=<value>"):
            route_overrides([bad])
    with pytest.raises(ConfigError, match="unknown task"):
        load_config(PipelineConfig, "tiny", ["finetune.tasks=[retrieval,segmentation]"], component="pipeline")


def test_stages_are_the_commands_in_order(tmp_path):
    cfg = load_config(PipelineConfig, "default", ["finetune.tasks=[retrieval,category]", "index.enabled=false",
                                                  "eval.enabled=true", "eval.overrides=[exhaustive=false]"],
                      component="pipeline")
    stages = build_stages(cfg, ["--catalog", "C", "--columns", "auto"], tmp_path)
    # the dual encoder before fine-tuning: it is the first stage retrieval mines hard negatives from
    assert [s.name for s in stages] == ["split", "baseline", "backbone", "patches", "dual", "sat", "tagger", "align",
                                        "pretrain", "finetune-retrieval", "finetune-category", "eval", "eval-dual",
                                        "release"]
    by_name = {s.name: s for s in stages}
    # the release preset attaches the reference's whole-image features: val and test are embedded too
    assert [c[c.index("--split") + 1] for c in by_name["baseline"].commands] == ["val", "test"]
    extract, union = by_name["patches"].commands
    assert extract[extract.index("--out") + 1] == str(tmp_path / "cache-patches")
    assert union[:3] == ["patches", "union", str(tmp_path / "cache-patches")]
    assert union[-2:] == ["--out", str(tmp_path / "cache")]
    # the tuned backbone's whole-image features, not the reference's, and the release ships it
    assert by_name["backbone"].commands[0][:2] == ["baseline", "tune-backbone"]
    assert str(tmp_path / "backbone" / "features" / "val") in union
    assert not any("baseline" in a for a in union)
    assert by_name["tagger"].commands[0][-3:] == ["--out", str(tmp_path / "tagger"), "threads=2"]
    # the served dual encoder is the backbone stage's linear maps, converted (no training)
    assert by_name["dual"].commands == [["dual", "from-linear", "--linear", str(tmp_path / "backbone" / "model"),
                                         "--out", str(tmp_path / "dual" / "final")]]
    build, evaluate, tagger_eval, card = by_name["release"].commands
    assert build[build.index("--matcher") + 1] == str(tmp_path / "finetune" / "retrieval" / "final")
    assert build[build.index("--patches") + 1] == str(tmp_path / "cache-patches" / "meta.json")
    assert evaluate[:3] == ["eval", "--model", str(tmp_path / "release")] and f"prior={tmp_path / 'baseline'}" in evaluate
    assert tagger_eval[:4] == ["tagger", "eval", "--model", str(tmp_path / "release")]
    assert build[build.index("--backbone") + 1] == str(tmp_path / "backbone" / "backbone" / "model.safetensors")
    assert card[:2] == ["release", "card"] and card[card.index("--name") + 1] == "kaleido-fashion-v4"
    assert "--reused" not in card
    assert by_name["split"].commands[0][:3] == ["data", "split", "C"]
    ft = by_name["finetune-category"].commands[0]
    assert ft[:4] == ["finetune", "category", "--from", str(tmp_path / "pretrain" / "final")]
    assert not any(a.startswith("retrieval.first_stage=") for a in ft)
    ret = by_name["finetune-retrieval"].commands[0]
    assert f"retrieval.first_stage={tmp_path / 'dual' / 'final'}" in ret
    ev = by_name["eval"].commands
    assert f"dual={tmp_path / 'dual' / 'final'}" in ev[0] and "exhaustive=false" in ev[0]
    assert f"prior={tmp_path / 'baseline'}" in ev[0]  # the linear reference row on the same draws
    assert by_name["baseline"].commands[0][:2] == ["baseline", "linear-probe"]
    assert by_name["eval-dual"].commands[0][:2] == ["dual", "eval"]


def test_without_the_backbone_stage_the_union_reads_the_reference_features(tmp_path):
    cfg = load_config(PipelineConfig, "default", ["backbone.enabled=false", "dual.config=whole"], component="pipeline")
    by_name = {s.name: s for s in build_stages(cfg, ["--catalog", "C"], tmp_path)}
    union = by_name["patches"].commands[1]
    assert str(tmp_path / "baseline" / "features" / "val") in union
    assert "--backbone" not in by_name["release"].commands[0]


def test_a_release_may_reuse_an_earlier_releases_tagger_and_matcher(tmp_path):
    earlier = tmp_path / "earlier"
    for part in ("dual", "tagger", "matcher"):
        (earlier / part).mkdir(parents=True)
    off = [f"{s}.enabled=false" for s in ("sat", "tagger", "align", "pretrain", "finetune")]
    with pytest.raises(ConfigError, match="no matcher"):   # without reuse, nothing trains its matcher or tagger
        build_stages(load_config(PipelineConfig, "default", off, component="pipeline"), ["--catalog", "C"], tmp_path)
    cfg = load_config(PipelineConfig, "default", [*off, f"release.reuse={earlier}"], component="pipeline")
    stages = build_stages(cfg, ["--catalog", "C"], tmp_path / "run")
    assert [s.name for s in stages] == ["split", "baseline", "backbone", "patches", "dual", "index", "release"]
    build, evaluate, _, card = stages[-1].commands
    assert build[build.index("--tagger") + 1] == str(earlier / "tagger")
    assert build[build.index("--matcher") + 1] == str(earlier / "matcher")
    assert card[card.index("--reused") + 1:] == [f"tagger={earlier / 'tagger'}", f"matcher={earlier / 'matcher'}"]
    assert evaluate[:2] == ["eval", "--model"]   # the reused matcher is measured with the new dual encoder
    (earlier / "matcher").rmdir()   # a release without a matcher has nothing for release.overrides to measure
    with pytest.raises(ConfigError, match="has no matcher/"):
        build_stages(load_config(PipelineConfig, "default", [*off, f"release.reuse={earlier}"], component="pipeline"),
                     ["--catalog", "C"], tmp_path / "run")
    with pytest.raises(ConfigError, match="not a released model folder"):
        build_stages(load_config(PipelineConfig, "default", [*off, f"release.reuse={tmp_path / 'nowhere'}"],
                                 component="pipeline"), ["--catalog", "C"], tmp_path / "run")


def test_a_run_started_before_a_stage_existed_resumes_with_it(tmp_path):
    import yaml

    from kaleido.pipeline.run import CONFIG_NAME, _check_config, _resolved

    cfg = load_config(PipelineConfig, "tiny", [], component="pipeline")  # its baseline is not the default
    old = _resolved(cfg, ["--catalog", "C"])
    del old["baseline"]  # what a run started before the baseline stage wrote
    saved = tmp_path / CONFIG_NAME
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    other = load_config(PipelineConfig, "tiny", ["pretrain.config=default"], component="pipeline")
    with pytest.raises(ConfigError, match="pretrain differ"):
        _check_config(tmp_path, _resolved(other, ["--catalog", "C"]))
    assert "baseline" not in yaml.safe_load(saved.read_text())  # a refused call writes nothing
    _check_config(tmp_path, _resolved(cfg, ["--catalog", "C"]))
    assert yaml.safe_load(saved.read_text()) == _resolved(cfg, ["--catalog", "C"])
    # a setting added to a stage since then (patches.whole_image) has its default in the old run
    old = _resolved(load_config(PipelineConfig, "tiny", ["patches.whole_image=false"], component="pipeline"),
                    ["--catalog", "C"])
    del old["patches"]["whole_image"]
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    same = load_config(PipelineConfig, "tiny", ["patches.whole_image=false"], component="pipeline")
    _check_config(tmp_path, _resolved(same, ["--catalog", "C"]))
    with pytest.raises(ConfigError, match="patches differ"):   # but not another value of it
        _check_config(tmp_path, _resolved(load_config(PipelineConfig, "tiny", [], component="pipeline"),
                                          ["--catalog", "C"]))


def test_the_release_recipe_serves_one_encoder(tmp_path):
    cfg = load_config(PipelineConfig, "default", [], component="pipeline")
    stages = {s.name: s for s in build_stages(cfg, ["--catalog", "C"], tmp_path)}
    assert "eval" not in stages and "finetune-multitask" in stages   # the release stage measures the model
    build = stages["release"].commands[0]
    assert build[build.index("--matcher") + 1] == str(tmp_path / "finetune" / "multitask" / "final")
    ft = stages["finetune-multitask"].commands[0]
    assert f"retrieval.first_stage={tmp_path / 'dual' / 'final'}" in ft and "category.input_skip=true" in ft


def test_the_one_encoder_model_is_evaluated_beside_the_separate_ones(tmp_path):
    cfg = load_config(PipelineConfig, "default", ["finetune.tasks=[retrieval,multitask]", "eval.enabled=true"],
                      component="pipeline")
    stages = {s.name: s for s in build_stages(cfg, ["--catalog", "C"], tmp_path)}
    assert stages["finetune-multitask"].commands[0][:2] == ["finetune", "multitask"]
    separate, multitask = stages["eval"].commands
    assert separate[2] == str(tmp_path / "finetune") and "test.json" in separate[separate.index("--json") + 1]
    assert multitask[2] == str(tmp_path / "finetune" / "multitask" / "final")
    assert multitask[multitask.index("--json") + 1].endswith("test-multitask.json")
    alone = load_config(PipelineConfig, "default", ["finetune.tasks=[multitask]", "eval.enabled=true"],
                        component="pipeline")
    assert len({s.name: s for s in build_stages(alone, ["--catalog", "C"], tmp_path)}["eval"].commands) == 1


@pytest.mark.parametrize("overrides, message", [
    (["dual.enabled=false", "finetune.enabled=false", "release.enabled=false"], "index needs the dual stage"),
    (["dual.enabled=false", "index.enabled=false", "release.enabled=false", "eval.enabled=true", "finetune.overrides=[]"],
     "eval needs the dual stage"),
    (["pretrain.enabled=false"], "finetune needs the pretrain stage"),
    (["align.config=default"], "has no --config"),
    (["dual.enabled=false", "index.enabled=false", "eval.enabled=false", "release.enabled=false",
      "finetune.overrides=[retrieval.mining=first_stage]"], "finetune needs the dual stage"),
    (["sat.enabled=false", "align.enabled=false"], "tagger needs the sat stage"),
    (["tagger.enabled=false"], "release needs the tagger stage"),
    (["baseline.enabled=false", "backbone.enabled=false"], "patches needs the baseline stage"),
    (["release.config=x"], "has no --config"),
    (["backbone.enabled=false"], "dual needs the backbone stage"),
    (["dual.overrides=[train.epochs=3]"], "trains nothing"),
    (["patches.whole_image=false"], "whole-image dual encoder"),
    (["finetune.tasks=[category]"], "the release would have no matcher"),
])
def test_a_stage_that_needs_a_disabled_one_is_refused_before_anything_runs(overrides, message, tmp_path):
    cfg = load_config(PipelineConfig, "default", ["eval.overrides=[exhaustive=false]", *overrides], component="pipeline")
    with pytest.raises(ConfigError, match=message):
        build_stages(cfg, ["--catalog", "C"], tmp_path)


def _catalog(root: Path, n: int = 16) -> Path:
    table = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False).head(n)
    (root / "images").mkdir(parents=True)
    for rel in table["image"]:
        shutil.copyfile(SAMPLE / rel, root / rel)
    table.to_csv(root / "products.csv", index=False)
    return root


def test_pipeline_runs_every_stage_and_resumes_after_kill_9(tmp_path):
    catalog, run = _catalog(tmp_path / "cat"), tmp_path / "run"
    argv = [sys.executable, "-m", "kaleido.cli", "pipeline", "--catalog", str(catalog), "--out", str(run),
            "--config", "tiny", "--quiet", "split.split.stratify_by=none", "split.split.train=0.4",
            "split.split.val=0.3",
            "pretrain.train.save_every=1",
            "pretrain.train.epochs=3"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = run / "pretrain" / "checkpoints" / "last"
    deadline = time.monotonic() + 900
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"the pipeline ended before pre-training checkpointed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)                     # mid pre-training
    proc.wait()
    time.sleep(1.0)
    done = sorted(p.stem for p in (run / "stages").glob("*.json"))
    assert done == ["align", "backbone", "baseline", "dual", "index", "patches", "sat", "split", "tagger"]  # pretrain had started
    # the running stage died with the pipeline: nothing writes into the run folder any more
    alive = subprocess.run(["pgrep", "-f", f"--out {run}/pretrain"], capture_output=True, text=True).stdout
    assert not alive.strip()
    before = {p.name: p.read_text() for p in (run / "stages").glob("*.json")}

    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    status = {name: r["status"] for name, r in summary["stages"].items()}
    assert status == {"split": "skipped", "baseline": "skipped", "backbone": "skipped", "patches": "skipped", "dual": "skipped",
                      "index": "skipped", "sat": "skipped", "tagger": "skipped", "align": "skipped",
                      "pretrain": "ran", "finetune-retrieval": "ran", "finetune-category": "ran",
                      "finetune-caption": "ran", "eval": "ran", "eval-dual": "ran", "release": "ran"}
    assert {p.name: p.read_text() for p in (run / "stages").glob("*.json") if p.name in before} == before
    assert "resuming" in (run / "logs" / "pretrain.log").read_text()   # the stage itself carried on
    pre = summary["stages"]["pretrain"]
    assert pre["wall_s"] > 0 and pre["peak_mb"] > 50 and pre["outputs"]["model"].endswith("pretrain/final")
    assert summary["stages"]["patches"]["headline"]["products"] == 16
    ev = summary["stages"]["eval"]["headline"]
    assert {"dual SumR", "two-stage SumR", "fused w=1 SumR", "ITM accuracy", "category accuracy",
            "linear reference SumR"} <= set(ev)
    assert "SumR" in summary["stages"]["baseline"]["headline"]
    assert (run / "index").is_dir() and "SumR" in summary["stages"]["eval-dual"]["headline"]
    assert list(summary["stages"]).index("dual") < list(summary["stages"]).index("finetune-retrieval")
    # the release: assembled from this run, measured with `kaleido eval --model`, its card written from the run
    rel = summary["stages"]["release"]["headline"]
    assert {"linear reference SumR", "dual SumR", "ITM accuracy"} <= set(rel)   # the retrieval fine-tune's matcher
    assert "category accuracy" not in rel
    assert any(k.startswith("tagger test category accuracy") for k in rel)
    assert summary["stages"]["patches"]["headline"]["with whole-image features"] == 16
    card = (run / "release" / "README.md").read_text()
    assert card.startswith("# tiny-release") and " ".join(argv[3:6]) in card and "| pretrain |" in card
    assert f"kaleido eval --model {run / 'release'}" in card and "linear reference" in card
    for part in ("dual", "tagger", "matcher", "backbone"):   # the tuned backbone the dual encoder's features need
        assert (run / "release" / part / "model.safetensors").is_file()

    # a finished run is all skips; other settings in the same folder are refused
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((run / "summary.json").read_text())["stages"]["eval"]["status"] == "skipped"
    other = subprocess.run(argv + ["pretrain.train.lr=0.5"], env=env, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "other settings" in other.stderr


def test_pipeline_reads_a_fashion_gen_h5(sample_dir, tmp_path, capsys):
    """The first stages on a small generated Fashion-Gen file (images inside the HDF5)."""
    from kaleido.cli import main

    h5 = tmp_path / "fg.h5"
    assert main(["data", "to-fashiongen", str(sample_dir), str(h5), "--limit", "10", "--image-size", "96"]) == 0
    off = [f"{s}.enabled=false" for s in ("baseline", "backbone", "sat", "tagger", "align", "pretrain", "finetune",
                                          "dual", "index", "eval", "release")]
    assert main(["pipeline", "--catalog", str(h5), "--out", str(tmp_path / "run"), "--config", "tiny", "--quiet",
                 "split.split.stratify_by=none", "patches.whole_image=false", *off]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["stages"]) == ["split", "patches"]
    assert summary["stages"]["patches"]["headline"] == {"products": 10, "skipped": 0}
    assert sum(summary["stages"]["split"]["headline"]["products"].values()) == 10
    assert "| patches | ran |" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(3700)
def test_pipeline_on_the_bundled_sample_at_the_demo_budget(tmp_path):
    """``kaleido pipeline --catalog data/sample --config demo`` end to end (about 30 min on 2 cores):
    every stage runs, the release it makes loads by path, and its card carries the figures."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "kaleido.cli", "pipeline", "--catalog", str(SAMPLE), "--out", str(run),
            "--config", "demo", "--quiet"]
    out = subprocess.run(argv, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert all(r["status"] == "ran" for r in summary["stages"].values())
    assert summary["stages"]["patches"]["headline"]["products"] == 301
    release = summary["stages"]["release"]["headline"]
    assert release["MB"] < 150 and 0 < release["dual SumR"] <= 600
    card = (run / "release" / "README.md").read_text()
    assert card.startswith("# kaleido-demo") and "| finetune-retrieval |" in card and "linear reference" in card
