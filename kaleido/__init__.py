"""Kaleido-BERT: a fashion vision-language system built from raw product photos and titles.

The package follows the pipeline of DESIGN.md: ``kaleido.data`` (catalogs, splits),
``saliency`` (foreground boxes), ``kaleido`` patches, ``sat_captioner`` alignments,
then pre-training and downstream heads.
"""

__version__ = "0.1.0"
