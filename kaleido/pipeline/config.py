"""The settings of ``kaleido pipeline``: which stages run, and each stage's preset and overrides.

Each stage is one ``kaleido`` command with its own documented config (``kaleido pretrain``'s
``PretrainConfig``, ...), so the pipeline does not copy those fields: a stage carries the
preset name its command takes (``--config``) and a list of ``key=value`` overrides for it.
On the command line a dotted override that starts with a stage name goes to that stage::

    kaleido pipeline --catalog C --out RUN --config demo pretrain.train.max_steps=60 finetune.tasks=[retrieval]

``<stage>.config``, ``<stage>.enabled``, ``finetune.tasks``, ``patches.whole_image`` and
``release.name`` are the pipeline's own keys;
any other ``<stage>.<key>=<value>`` is appended to that stage's overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from kaleido.config import ConfigError

TASKS = ("retrieval", "category", "caption", "multitask")


@dataclass
class StageSettings:
    """One stage: its command's preset (``""`` = the command's default) and overrides."""

    enabled: bool = True
    config: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class PatchSettings(StageSettings):
    """Patch extraction; ``whole_image`` also attaches a whole-image feature to every product
    (``kaleido patches union``), which the ``whole`` dual encoder reads (and so the first stage
    that fine-tuning mines negatives from): the cache is extracted into ``RUN/cache-patches``
    and ``RUN/cache`` is the union of it with ``RUN/backbone/features/{train,val,test}`` (the
    tuned backbone's) or, with the backbone stage off, ``RUN/baseline/features/...`` (the
    linear reference's frozen ones)."""

    whole_image: bool = False


@dataclass
class ReleaseSettings(StageSettings):
    """The released model folder ``RUN/release``: the dual encoder, the tagger with its
    captioner and the Kaleido-BERT matcher (the multitask fine-tune when there is one, else the
    retrieval one), float16, measured on the test split (``kaleido eval --model``, with the
    overrides given here, and ``kaleido tagger eval --model``) and described by a model card
    written from the run. ``name``: what it is called once copied to ``models/<name>``."""

    name: str = "kaleido-fashion"
    # a released model (a name under models/ or a path) whose tagger/ and matcher/ this release
    # takes as they are where the run trains none (tagger / finetune off); its card says so
    reuse: str = ""


@dataclass
class FinetuneSettings(StageSettings):
    """The fine-tuning stages: one run per task, all from the pre-training run's ``final/``."""

    # multitask: one encoder for all three (the serving checkpoint), evaluated beside the others
    tasks: list[str] = field(default_factory=lambda: ["retrieval", "category", "caption"])

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ConfigError(f"finetune.tasks: unknown task(s) {sorted(unknown)}; choose from {TASKS}")


@dataclass
class PipelineConfig:
    """Every stage of ``kaleido pipeline``, in the order they run.

    ``split`` (``kaleido data split``), ``baseline`` (the frozen-feature linear reference,
    ``kaleido baseline linear-probe``: a row of every results table), ``backbone`` (the image
    backbone's last stages tuned with the reference's recipe, ``kaleido baseline
    tune-backbone``: the whole-image features served), ``patches`` (saliency +
    kaleido patches: ``kaleido patches extract``), ``dual`` (the search dual encoder),
    ``index`` (its FAISS index of the catalog), ``sat`` (the captioner), ``tagger`` (the
    attribute tagger of ``kaleido tag``, reading the captioner), ``align`` (token-patch
    alignments), ``pretrain``, ``finetune`` (retrieval, category, caption, multitask),
    ``eval`` (Tables 2 and 3 on the test split with the two-stage systems, and the dual
    encoder's own evaluation) and ``release`` (the served model folder with its model card). The dual encoder comes before fine-tuning because it is the
    first stage that retrieval fine-tuning mines its hard negatives from
    (``retrieval.mining=first_stage``; ALBEF's align before fuse).
    """

    split: StageSettings = field(default_factory=StageSettings)
    baseline: StageSettings = field(default_factory=StageSettings)
    backbone: StageSettings = field(default_factory=StageSettings)
    patches: PatchSettings = field(default_factory=PatchSettings)
    dual: StageSettings = field(default_factory=StageSettings)
    index: StageSettings = field(default_factory=StageSettings)
    sat: StageSettings = field(default_factory=StageSettings)
    tagger: StageSettings = field(default_factory=StageSettings)
    align: StageSettings = field(default_factory=StageSettings)
    pretrain: StageSettings = field(default_factory=StageSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    eval: StageSettings = field(default_factory=StageSettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)


SECTIONS = ("split", "baseline", "backbone", "patches", "dual", "index", "sat", "tagger", "align", "pretrain", "finetune", "eval",
            "release")
OWN_KEYS = ("enabled", "config", "overrides", "tasks", "whole_image", "name", "reuse")


def route_overrides(items: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split command-line overrides into the pipeline's own and the stages' ones.

    Returns:
        ``(pipeline overrides, {stage: [overrides for its command]})``.
    """
    own: list[str] = []
    stages: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, _, rest = key.partition(".")
        if not sep or section not in SECTIONS or not rest:
            raise ConfigError(f"pipeline override {item!r}: expected <stage>.<key>=<value> with a stage "
                              f"among {', '.join(SECTIONS)}")
        if rest in OWN_KEYS:
            own.append(item)
        else:
            stages.setdefault(section, []).append(f"{rest}={value}")
    return own, stages
