"""``kaleido pipeline``: from a raw catalog to a served model in one resumable command."""

from kaleido.pipeline.config import FinetuneSettings, PipelineConfig, StageSettings, route_overrides
from kaleido.pipeline.run import StageFailed, format_summary, run_pipeline
from kaleido.pipeline.stages import Stage, build_stages

__all__ = ["FinetuneSettings", "PipelineConfig", "Stage", "StageFailed", "StageSettings", "build_stages",
           "format_summary", "route_overrides", "run_pipeline"]
