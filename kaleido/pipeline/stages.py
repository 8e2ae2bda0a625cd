"""The stages of ``kaleido pipeline``: the ``kaleido`` command lines each one runs, where its
outputs land inside the run folder, and the headline figures read back from them.

Every command is resumable on its own (cache shards, training checkpoints, the alignment
store, index chunks), so the pipeline only has to run them in order and remember which
finished.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kaleido.config import ConfigError
from kaleido.pipeline.config import PipelineConfig, StageSettings


#: ``dual.config`` that serves the backbone stage's linear maps as the dual encoder (no training;
#: ``kaleido dual from-linear``)
FROM_BACKBONE = "from-backbone"


@dataclass
class Stage:
    """One step: ``commands`` (argv lists for ``kaleido``) run in order; ``headline`` reads its
    figures once they have all succeeded."""

    name: str
    commands: list[list[str]]
    outputs: dict[str, str]
    headline: Callable[[], dict] = field(default=lambda: {}, repr=False)


def _preset(settings: StageSettings) -> list[str]:
    return ["--config", settings.config] if settings.config else []


def _rows(path: Path) -> list[dict]:
    """The rows of a ``log.csv`` as ``{column: float}`` (empty cells left out)."""
    if not path.is_file():
        return []
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                try:
                    parsed[k] = round(float(v), 4)
                except (TypeError, ValueError):
                    pass
            out.append(parsed)
    return out


def _training_headline(log_csv: Path) -> dict:
    """The last logged step, with the last validation row of a ``log.csv`` (``val_*``
    columns) or, without validation, the last training loss."""
    rows = _rows(log_csv)
    if not rows:
        return {}
    val = [r for r in rows if any(k.startswith("val_") for k in r)]
    figures = ({k: v for k, v in val[-1].items() if k.startswith("val_")} if val
               else {k: v for k, v in rows[-1].items() if k == "loss"})
    steps = [r["step"] for r in rows if "step" in r]
    return {**({"steps": int(steps[-1])} if steps else {}), **figures}


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _split_headline(run: Path) -> dict:
    return {"products": _json(run / "split" / "split.json").get("counts", {})}


def _cache_headline(run: Path, extracted: Path) -> dict:
    from kaleido.patches.cache import FeatureCache

    cache = FeatureCache(run / "cache")
    skipped = sum(len(_json(f).get("skipped", [])) for f in extracted.glob("shard-*/ids.json"))
    figures = {"products": len(cache), "skipped": skipped}
    if extracted != run / "cache":   # a union with the reference's whole-image features
        figures["with whole-image features"] = sum(cache.has_whole_image(i) for i in cache.ids)
    return figures


def _align_headline(run: Path) -> dict:
    from kaleido.alignment.store import ALIGNMENTS_FILE

    path = run / "cache" / ALIGNMENTS_FILE
    return {"products": sum(1 for _ in path.open()) if path.is_file() else 0}


def _index_headline(index: Path) -> dict:
    from kaleido.search.index import INFO_NAME

    info = _json(index / INFO_NAME)
    return {"products": info.get("count"), "kind": info.get("kind")}


def _backbone_headline(backbone: Path) -> dict:
    result = _json(backbone / "result.json")
    out = {f"{split} SumR": round(result[split]["SumR"], 1) for split in ("val", "test") if split in result}
    if "train" in result:
        out["train min"] = round(result["train"]["seconds"] / 60, 1)
    return out


def _baseline_headline(baseline: Path) -> dict:
    result = _json(baseline / "result.json")
    figures = {"SumR": round(result["retrieval"]["SumR"], 1)} if "retrieval" in result else {}
    for target in ("category", "subcategory"):
        if "image" in result.get(target, {}):
            figures[f"{target} accuracy (image)"] = round(result[target]["image"]["accuracy"], 4)
    return figures


def _dual_eval_headline(run: Path) -> dict:
    out = _json(run / "eval" / "dual.json")
    figures = {"SumR": round(out["retrieval"]["SumR"], 1)} if "retrieval" in out else {}
    for target, m in out.get("zero_shot", {}).items():
        figures[f"zero-shot {target} accuracy"] = round(m["accuracy"], 4)
    return figures


def _release_headline(run: Path) -> dict:
    release = run / "release"
    size = sum(f.stat().st_size for f in release.rglob("*") if f.is_file())
    figures = {"MB": round(size / 2**20, 1)}
    figures.update(_eval_figures(_json(run / "release-eval" / "test.json")))
    figures.update({f"tagger {k}": v for k, v in _tagger_headline(run / "release-eval" / "tagger-test.json").items()})
    return figures


def _tagger_headline(report: Path) -> dict:
    """Accuracy of a few fields per input mode, from a tagger's report (train) or eval JSON."""
    out = _json(report)
    figures = {}
    for mode, fields in out.get("tagger", {}).items():
        for name in ("category", "subcategory", "baseColour"):
            if name in fields:
                figures[f"{out.get('split', '')} {name} accuracy ({mode})".strip()] = round(fields[name]["accuracy"], 4)
    return figures


def _eval_headline(run: Path) -> dict:
    out = _eval_figures(_json(run / "eval" / "test.json"))
    multitask = run / "eval" / "test-multitask.json"
    if multitask.is_file():
        out.update({f"one encoder: {k}": v for k, v in _eval_figures(_json(multitask)).items()})
    return out


def _eval_figures(test: dict) -> dict:
    out: dict = {}
    r = test.get("retrieval", {})
    if "prior" in r:
        out["linear reference SumR"] = round(r["prior"]["SumR"], 1)
    if "dual" in r:
        out["dual SumR"] = round(r["dual"]["SumR"], 1)
        out["two-stage SumR"] = round(r["two_stage"]["SumR"], 1)
        for w, fused in r.get("two_stage_fused", {}).items():
            out[f"fused w={float(w):g} SumR"] = round(fused["SumR"], 1)
    if "itm" in r:
        out["ITM accuracy"] = round(r["itm"]["accuracy"], 3)
        if "auc" in r["itm"]:
            out["ITM AUC"] = round(r["itm"]["auc"], 3)
    for target in ("category", "subcategory"):
        if target in test:
            out[f"{target} accuracy"] = round(test[target]["accuracy"], 4)
    caption = test.get("caption", {}).get("scores", {})
    for metric in ("BLEU-4", "CIDEr"):
        if metric in caption:
            out[metric] = round(caption[metric], 4)
    return out


def check_stages(cfg: PipelineConfig) -> None:
    """Refuse, before anything runs, a combination whose later stage needs a disabled one."""
    needs = {"align": ["sat"], "finetune": ["pretrain"], "index": ["dual"], "eval": ["finetune"],
             "tagger": ["sat"], "release": ["patches", "dual", "tagger"]}
    if cfg.patches.whole_image and not cfg.backbone.enabled:
        needs["patches"] = ["baseline"]   # the whole-image features are the linear reference's
    if any(o.replace(" ", "") == "retrieval.mining=first_stage" for o in cfg.finetune.overrides):
        needs["finetune"].append("dual")
    if any(o.replace(" ", "") == "exhaustive=false" for o in cfg.eval.overrides):
        needs["eval"].append("dual")
    if cfg.dual.config == FROM_BACKBONE:   # the dual encoder is the tuned backbone run's linear maps
        needs["dual"] = ["backbone"]
        if cfg.dual.overrides:
            raise ConfigError(f"pipeline: dual.config={FROM_BACKBONE} trains nothing (it converts the backbone "
                              f"stage's linear maps); dual.overrides {cfg.dual.overrides} have nothing to set")
    whole_dual = cfg.dual.config in ("whole", FROM_BACKBONE) or any(
        o.replace(" ", "") == "model.image.whole_image=true" for o in cfg.dual.overrides)
    if cfg.dual.enabled and whole_dual and cfg.patches.enabled and not cfg.patches.whole_image:
        raise ConfigError("pipeline: the whole-image dual encoder (dual.config=whole) reads the whole-image "
                          "features that patches.whole_image=true attaches to the cache; set it, or choose "
                          "dual.config=pooled")
    reused_matcher = False
    if cfg.release.enabled and cfg.release.reuse:   # the reused release's tagger stands in for the tagger stage
        from kaleido.demo.session import resolve_model

        try:
            reused_matcher = (resolve_model(cfg.release.reuse) / "matcher").is_dir()
        except FileNotFoundError as e:
            raise ConfigError(f"pipeline: release.reuse={cfg.release.reuse}: {e}") from None
        needs["release"] = ["patches", "dual"]
    tasks = cfg.finetune.tasks if cfg.finetune.enabled else []
    if (cfg.release.enabled and cfg.release.overrides and not {"retrieval", "multitask"} & set(tasks)
            and not reused_matcher):
        raise ConfigError("pipeline: release.overrides are the settings of `kaleido eval --model`, which "
                          "measures the release's Kaleido-BERT matcher, but finetune.tasks has neither "
                          "retrieval nor multitask (or finetune is off)"
                          + (f", and release.reuse={cfg.release.reuse} has no matcher/" if cfg.release.reuse else "")
                          + ": the release would have no matcher. Drop release.overrides or fine-tune a matcher")
    for stage, required in needs.items():
        if getattr(cfg, stage).enabled:
            off = [r for r in required if not getattr(cfg, r).enabled]
            if off:
                raise ConfigError(f"pipeline: {stage} needs the {', '.join(off)} stage's outputs, but "
                                  f"{', '.join(r + '.enabled=false' for r in off)}; disable {stage} too")
    for stage in ("align", "index", "eval", "tagger", "release"):   # their commands take no preset
        if getattr(cfg, stage).config:
            raise ConfigError(f"pipeline: `kaleido {stage}` has no --config; give {stage} overrides instead "
                              f"of {stage}.config={getattr(cfg, stage).config}")


def build_stages(cfg: PipelineConfig, catalog_args: list[str], run: Path) -> list[Stage]:
    """The enabled stages of ``cfg`` for a catalog (``--catalog C [--columns ...]`` argv) and a
    run folder, in order."""
    check_stages(cfg)
    run = Path(run)
    split, cache = str(run / "split"), str(run / "cache")
    data = ["--cache", cache, "--split-file", split]
    stages: list[Stage] = []

    def add(settings: StageSettings, stage: Stage) -> None:
        if settings.enabled:
            stages.append(stage)

    catalog = catalog_args[1]  # `data split` takes the catalog as a positional argument
    add(cfg.split, Stage("split", [["data", "split", catalog, *catalog_args[2:], "--out", split,
                                    *_preset(cfg.split), *cfg.split.overrides]],
                         {"split": split}, lambda: _split_headline(run)))
    baseline = run / "baseline"
    # whole-image features of val too (the dual encoder selects on val), then test: result.json is test's
    scored = ["val", "test"] if cfg.patches.enabled and cfg.patches.whole_image else ["test"]
    add(cfg.baseline, Stage("baseline", [["baseline", "linear-probe", *catalog_args, "--split-file", split,
                                          "--split", name, "--out", str(baseline), *cfg.baseline.overrides]
                                         for name in scored],
                            {"reference": str(baseline)}, lambda: _baseline_headline(baseline)))
    backbone = run / "backbone"
    add(cfg.backbone, Stage("backbone", [["baseline", "tune-backbone", *catalog_args, "--split-file", split,
                                          "--out", str(backbone), "--quiet", *cfg.backbone.overrides]],
                            {"backbone": str(backbone / "backbone" / "model.safetensors")},
                            lambda: _backbone_headline(backbone)))
    extracted = run / "cache-patches" if cfg.patches.whole_image else run / "cache"
    patch_commands = [["patches", "extract", *catalog_args, "--out", str(extracted), *_preset(cfg.patches),
                       *cfg.patches.overrides]]
    if cfg.patches.whole_image:   # the tuned backbone's whole-image features, else the reference's
        source = backbone if cfg.backbone.enabled else baseline
        patch_commands.append(["patches", "union", str(extracted), "--whole-image",
                               *[str(source / "features" / name) for name in ("train", "val", "test")],
                               "--out", cache])
    add(cfg.patches, Stage("patches", patch_commands, {"cache": cache},
                           lambda: _cache_headline(run, extracted)))
    dual = run / "dual"
    if cfg.dual.config == FROM_BACKBONE:
        add(cfg.dual, Stage("dual", [["dual", "from-linear", "--linear", str(backbone / "model"),
                                      "--out", str(dual / "final")]],
                            {"model": str(dual / "final")}, lambda: {"from": str(backbone / "model")}))
    else:
        add(cfg.dual, Stage("dual", [["dual", "train", *catalog_args, *data, "--out", str(dual),
                                      *_preset(cfg.dual), *cfg.dual.overrides]],
                            {"model": str(dual / "final")}, lambda: _training_headline(dual / "log.csv")))
    index = run / "index"
    add(cfg.index, Stage("index", [["index", "build", *catalog_args, "--cache", cache, "--model", str(dual / "final"),
                                    "--out", str(index), *cfg.index.overrides]],
                         {"index": str(index)}, lambda: _index_headline(index)))
    add(cfg.sat, Stage("sat", [["sat", "train", *catalog_args, "--split-file", split, "--out", str(run / "sat"),
                                *_preset(cfg.sat), *cfg.sat.overrides]],
                       {"sat": str(run / "sat")}, lambda: _training_headline(run / "sat" / "log.csv")))
    tagger = run / "tagger"
    add(cfg.tagger, Stage("tagger", [["tagger", "train", *catalog_args, "--split-file", split, "--sat", str(run / "sat"),
                                      "--out", str(tagger), *cfg.tagger.overrides]],
                          {"tagger": str(tagger)}, lambda: _tagger_headline(tagger / "report.json")))
    add(cfg.align, Stage("align", [["align", "build", *catalog_args, "--cache", cache, "--sat", str(run / "sat"),
                                    *cfg.align.overrides]],
                         {"alignments": cache}, lambda: _align_headline(run)))
    pre = run / "pretrain"
    add(cfg.pretrain, Stage("pretrain", [["pretrain", *catalog_args, *data, "--out", str(pre),
                                          *_preset(cfg.pretrain), *cfg.pretrain.overrides]],
                            {"model": str(pre / "final")}, lambda: _training_headline(pre / "log.csv")))
    if cfg.finetune.enabled:
        for task in cfg.finetune.tasks:
            out = run / "finetune" / task
            # the dual encoder is the model retrieval.mining=first_stage mines negatives from
            mining = ([f"retrieval.first_stage={dual / 'final'}"]
                      if cfg.dual.enabled and task in ("retrieval", "multitask") else [])
            stages.append(Stage(f"finetune-{task}",
                                [["finetune", task, "--from", str(pre / "final"), *catalog_args, *data,
                                  "--out", str(out), *_preset(cfg.finetune), *mining, *cfg.finetune.overrides]],
                                {"model": str(out / "final")},
                                lambda out=out: _training_headline(out / "log.csv")))
    if cfg.eval.enabled:
        ev = run / "eval"
        two_stage = [f"dual={dual / 'final'}"] if cfg.dual.enabled else []
        two_stage += [f"prior={baseline}"] if cfg.baseline.enabled else []  # the linear reference row
        tasks = cfg.finetune.tasks if cfg.finetune.enabled else []
        separate = [t for t in tasks if t != "multitask"]
        commands, outputs = [], {"test": str(ev / "test.json")}

        def evaluate(checkpoint: Path, name: str, json_file: Path) -> list[str]:
            return ["eval", "--checkpoint", str(checkpoint), *catalog_args, *data, "--split", "test",
                    "--name", name, "--json", str(json_file), *two_stage, *cfg.eval.overrides]

        commands.append(evaluate(run / "finetune", "Kaleido-BERT", ev / "test.json"))
        if "multitask" in tasks and separate:  # the one-encoder model beside the separate fine-tunes
            outputs["test_multitask"] = str(ev / "test-multitask.json")
            commands.append(evaluate(run / "finetune" / "multitask" / "final", "Kaleido-BERT (one encoder)",
                                     ev / "test-multitask.json"))
        stages.append(Stage("eval", commands, outputs, lambda: _eval_headline(run)))
        if cfg.dual.enabled:  # the dual encoder's own figures (zero-shot too), same KB-101 protocol
            kb101 = [o for o in cfg.eval.overrides if o.startswith("kb101.")]
            stages.append(Stage("eval-dual", [["dual", "eval", "--model", str(dual / "final"), *catalog_args, *data,
                                               "--split", "test", "--json", str(ev / "dual.json"), *kb101]],
                                {"dual": str(ev / "dual.json")}, lambda: _dual_eval_headline(run)))
    if cfg.release.enabled:
        stages.append(_release_stage(cfg, catalog_args, run, extracted))
    return stages


def _shown(path: Path) -> str:
    """A path as the model card shows it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _release_stage(cfg: PipelineConfig, catalog_args: list[str], run: Path, extracted: Path) -> Stage:
    """Assemble ``RUN/release``, measure it as a user would (``kaleido eval --model``,
    ``kaleido tagger eval --model``) and write its model card from the run."""
    release, measured = run / "release", run / "release-eval"
    tasks = cfg.finetune.tasks if cfg.finetune.enabled else []
    matcher = next((run / "finetune" / t / "final" for t in ("multitask", "retrieval") if t in tasks), None)
    tagger, reused = run / "tagger", []
    if cfg.release.reuse:
        from kaleido.demo.session import resolve_model

        earlier = resolve_model(cfg.release.reuse)
        if not cfg.tagger.enabled:
            tagger = earlier / "tagger"
            reused.append(f"tagger={_shown(tagger)}")
        if matcher is None and (earlier / "matcher").is_dir():
            matcher = earlier / "matcher"
            reused.append(f"matcher={_shown(matcher)}")
    data = ["--cache", str(run / "cache"), "--split-file", str(run / "split")]
    tuned = cfg.backbone.enabled and cfg.patches.whole_image   # the dual encoder reads the tuned backbone's features
    commands = [["release", "build", "--out", str(release), "--dual", str(run / "dual" / "final"),
                 "--tagger", str(tagger), "--patches", str(extracted / "meta.json"),
                 *(["--matcher", str(matcher)] if matcher else []),
                 *(["--backbone", str(run / "backbone" / "backbone" / "model.safetensors")] if tuned else [])]]
    card = ["release", "card", "--run", str(run), "--release", str(release), "--name", cfg.release.name,
            "--tagger-json", str(measured / "tagger-test.json")]
    if matcher:
        prior = [f"prior={run / 'baseline'}"] if cfg.baseline.enabled else []
        commands.append(["eval", "--model", str(release), *catalog_args, *data, "--split", "test",
                         "--name", cfg.release.name, "--json", str(measured / "test.json"), *prior,
                         *cfg.release.overrides])
        card += ["--eval-json", str(measured / "test.json")]
    commands.append(["tagger", "eval", "--model", str(release), *catalog_args, "--split-file", str(run / "split"),
                     "--split", "test", "--json", str(measured / "tagger-test.json")])
    commands.append(card + (["--reused", *reused] if reused else []))
    return Stage("release", commands, {"release": str(release), "card": str(release / "README.md")},
                 lambda: _release_headline(run))
