"""The serving checkpoint: one encoder fine-tuned for retrieval, category and captioning at once."""

import json

import pytest
import torch

from kaleido.cli import main
from kaleido.evaluation.evaluate import find_checkpoints
from kaleido.finetune import CaptionConfig, FinetuneConfig, PairInputs, RetrievalConfig, load_task
from kaleido.finetune.multitask import MultitaskConfig, MultitaskDataset, MultitaskTask
from kaleido.finetune.retrieval import RetrievalTask
from kaleido.finetune.run import build_data, build_task
from kaleido.model import KaleidoProcessor, create_model
from kaleido.patches.cache import FeatureCache


@pytest.fixture(scope="module")
def pairs(pretrain_data):
    return PairInputs(list(pretrain_data["catalog"]), FeatureCache(pretrain_data["cache"]),
                      KaleidoProcessor.default(max_text_len=32))


def _multitask(pairs, weights=None) -> MultitaskTask:
    torch.manual_seed(0)
    cfg = FinetuneConfig(retrieval=RetrievalConfig(text_negatives=1, image_negatives=1),
                         caption=CaptionConfig(max_len=6), multitask=MultitaskConfig(weights=weights or {}))
    return build_task("multitask", cfg, create_model("tiny", feature_dim=32), pairs)


def _batch(task: MultitaskTask, pairs):
    data, collate = build_data(task, pairs, seed=0)
    assert isinstance(data, MultitaskDataset) and len(data) == len(pairs)
    return collate([data[i] for i in range(4)])


def test_one_encoder_and_the_loss_is_the_weighted_sum(pairs):
    task = _multitask(pairs, {"caption": 0.5}).eval()
    assert all(sub.model is task.model for sub in task.tasks.values())
    batch = _batch(task, pairs)
    with torch.no_grad():
        out = task(batch)
        parts = {kind: sub(batch[kind])["loss"] for kind, sub in task.tasks.items()}
    torch.testing.assert_close(out["loss"], parts["retrieval"] + parts["category"] + 0.5 * parts["caption"])
    assert {"retrieval_loss", "category_loss", "subcategory_loss", "caption_loss"} <= set(out)


def test_each_head_keeps_its_learning_rate_inside_the_multitask_model(pairs):
    from kaleido.finetune import CategoryConfig
    from kaleido.training import param_groups

    torch.manual_seed(0)
    cfg = FinetuneConfig(retrieval=RetrievalConfig(text_negatives=1, image_negatives=1, encoder_lr_scale=0.5),
                         category=CategoryConfig(head_lr_scale=10), caption=CaptionConfig(max_len=6))
    task = build_task("multitask", cfg, create_model("tiny", feature_dim=32), pairs)
    lr_of = {}
    for g in param_groups(task, 0.01, lr=1e-4):
        for p in g["params"]:
            lr_of[id(p)] = g.get("lr", 1e-4)
    for name, p in task.named_parameters():
        if name.startswith("tasks.category.classifiers."):
            assert lr_of[id(p)] == pytest.approx(1e-3), name
        elif name.startswith(("model.encoder.", "model.embeddings.")):
            assert lr_of[id(p)] == pytest.approx(5e-5), name


def test_the_folder_loads_as_each_task_with_the_same_outputs(pairs, tmp_path):
    task = _multitask(pairs).eval()
    task.save_pretrained(tmp_path / "m")
    batch = _batch(task, pairs)
    for kind in ("retrieval", "category", "caption"):
        sub = load_task(tmp_path / "m", kind)
        assert type(sub) is type(task.tasks[kind]) and not sub.training
        with torch.no_grad():
            torch.testing.assert_close(sub(batch[kind])["loss"], task.tasks[kind](batch[kind])["loss"])
    again = load_task(tmp_path / "m")
    assert isinstance(again, MultitaskTask) and set(again.tasks) == {"retrieval", "category", "caption"}
    assert again.tasks["caption"].lm.decoder.weight is again.model.word_embeddings.weight  # tied
    assert find_checkpoints(tmp_path / "m") == {k: tmp_path / "m" for k in ("retrieval", "category", "caption")}
    task.tasks["retrieval"].save_pretrained(tmp_path / "r")
    with pytest.raises(ValueError, match="retrieval model, not category"):
        load_task(tmp_path / "r", "category")
    # beside separate fine-tunes the one-encoder model is never mixed in
    root = tmp_path / "ft"
    task.tasks["retrieval"].save_pretrained(root / "retrieval" / "final")
    task.save_pretrained(root / "multitask" / "final")
    assert find_checkpoints(root) == {"retrieval": root / "retrieval" / "final"}
    (root / "retrieval" / "final" / "finetune.json").unlink()
    assert set(find_checkpoints(root)) == {"retrieval", "category", "caption"}


def test_bad_multitask_settings_are_refused():
    with pytest.raises(ValueError, match="multitask.tasks"):
        MultitaskConfig(tasks=["retrieval", "tagging"])
    with pytest.raises(ValueError, match="multitask.tasks"):
        MultitaskConfig(tasks=["retrieval"], weights={"caption": 1.0})
    model = create_model("tiny", feature_dim=32)
    with pytest.raises(ValueError, match="share its encoder"):
        MultitaskTask(model, MultitaskConfig(tasks=["retrieval"]),
                      {"retrieval": RetrievalTask(create_model("tiny", feature_dim=32), RetrievalConfig())})


def test_finetune_multitask_then_eval_every_task(pretrain_data, tmp_path, capsys):
    d = pretrain_data
    data_args = ["--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]),
                 "--cache", str(d["cache"]), "--split-file", str(d["split"])]
    out = tmp_path / "ft" / "multitask"
    assert main(["finetune", "multitask", "--from", "none", "--config", "tiny", *data_args,
                 "--out", str(out), "data.val_split=val"]) == 0
    log = (out / "log.csv").read_text()
    assert "retrieval_loss" in log and "category_loss" in log and "caption_loss" in log and "val_loss" in log
    info = json.loads((out / "final" / "finetune.json").read_text())
    assert info["task"] == "multitask" and set(info["tasks"]) == {"retrieval", "category", "caption"}
    capsys.readouterr()
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "ft"), *data_args, "--split", "train",
                 "--json", str(result), "kb101.queries=4", "kb101.negatives=8", "kb101.draws=1",
                 "full_catalog=0", "meteor=false"]) == 0
    figures = json.loads(result.read_text())
    assert {"retrieval", "category", "subcategory", "caption"} <= set(figures)
    assert figures["environment"]["packages"]["torch"] == torch.__version__.split("+")[0]


class SimulatedKill(RuntimeError):
    pass


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_does(pretrain_data, dual_dir, tmp_path,
                                                                    monkeypatch):
    """The systems recipe (ITM + category, negatives mined from a first stage), killed after a
    checkpoint and run again, gives the same weights as a run never killed."""
    from safetensors.torch import load_file

    from kaleido.config import load_config
    from kaleido.finetune import finetune

    d = pretrain_data
    cfg = load_config(FinetuneConfig, "tiny", [
        "multitask.tasks=[retrieval,category]", "retrieval.mining=first_stage",
        f"retrieval.first_stage={dual_dir}", "retrieval.mining_random=0.5", "retrieval.mining_pool=4",
        "retrieval.itm_interaction=bilinear", "category.input_skip=true", "train.max_steps=6",
        "train.save_every=2", "data.split=train", "data.val_split=''", "train.schedule=cosine",
        "train.warmup_steps=2"], component="finetune")

    def run(out):
        return finetune("multitask", cfg, d["catalog"], d["cache"], "none", out, split_file=d["split"])

    run(tmp_path / "whole")
    calls, forward = {"n": 0}, MultitaskTask.forward

    def dying_forward(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4, after the checkpoint of step 2
            raise SimulatedKill
        return forward(self, batch)

    monkeypatch.setattr(MultitaskTask, "forward", dying_forward)
    with pytest.raises(SimulatedKill):
        run(tmp_path / "killed")
    monkeypatch.setattr(MultitaskTask, "forward", forward)
    run(tmp_path / "killed")

    def weights(run_dir):
        return {p.name: load_file(str(p)) for p in sorted((run_dir / "final").glob("*.safetensors"))}

    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
