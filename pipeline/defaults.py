"""The pipeline's own defaults that no dataclass holds: plain data, no torch import (the CLI builds its options from
them). Heads and their capabilities live in `dae.heads.registry`; training settings in `dae.pipeline.settings`,
which reads them from the dataclasses that use them."""

AVERAGES = ("fisher-z", "mean")  # how folds' Spearman values are averaged in summaries
STUDY_SEEDS = 5  # a study trains seeds 0..4 of every configuration unless told otherwise
