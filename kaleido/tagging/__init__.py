"""Catalog tagging: category, subcategory and attributes with calibrated probabilities, a
caption, and flags for likely catalog errors (``kaleido tagger train``, ``kaleido tag``)."""

from kaleido.tagging.features import FeatureRows, TagFeatureCache, TagFeatureConfig, TagFeatureExtractor
from kaleido.tagging.job import TagJobConfig, run_tag_job
from kaleido.tagging.model import AttributeTagger, TaggerConfig
from kaleido.tagging.tagger import FieldTag, Tagger, Tags

__all__ = ["AttributeTagger", "FeatureRows", "FieldTag", "TagFeatureCache", "TagFeatureConfig",
           "TagFeatureExtractor", "TagJobConfig", "Tagger", "TaggerConfig", "Tags", "run_tag_job"]
