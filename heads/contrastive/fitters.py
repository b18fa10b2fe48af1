"""The exemplar heads of `dae fit` (core, dae-core): exemplar rule, theta and voters from the manifest, options and
card; the head objects for the stacked trainer; their leaderboard labels; re-voting trained models.

CoRe's defaults: with difficulty on MTL-AQA (the target is final score / DD, exemplars of the same DD), without
elsewhere; its voter count and learning rate are the registry's (`dae.heads.registry`). `--with-dd` on a manifest
without a difficulty column is a usage error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dae.errors import UsageError
from dae.heads.contrastive.models import CoRe, DAECoRe, exemplar_targets
from dae.heads.registry import DEFAULT_VOTERS, EXEMPLAR_HEADS

WITH_DD_BY_DEFAULT = ("mtl-aqa",)  # CoRe's MTL-AQA config: usingDD True
DAE_CORE_NOTE = ("ours: a DAE head on CoRe's pair feature, the voters' Gaussian mixture (the paper's DAE-CoRe "
                 "is not described in detail)")
CORE_NOTE = "CoRe's group-aware regression tree on cached features (yuxumin/CoRe's head, frozen backbone)"


@dataclass(frozen=True)
class ExemplarOptions:
    """Options of the exemplar heads; with_dd None: the dataset's default (with DD on MTL-AQA, as CoRe)."""

    voters: int = DEFAULT_VOTERS
    with_dd: bool | None = None
    extra_voters: tuple = ()  # also vote with these counts (dae ablate voters)

    def check(self):
        if self.voters < 1:
            raise UsageError(f"--voters must be >= 1, got {self.voters}")


def uses_dd(options: ExemplarOptions, manifest: pd.DataFrame, dataset: str, where: str) -> bool:
    if options.with_dd is None:
        return dataset in WITH_DD_BY_DEFAULT and "difficulty" in manifest.columns
    if options.with_dd and "difficulty" not in manifest.columns:
        raise UsageError(f"--with-dd needs a difficulty column; {where} has none")
    return options.with_dd


def make_exemplar_head(head: str, features, manifest: pd.DataFrame, targets, jobs, config, score_range,
                       dataset: str = "", options: ExemplarOptions | None = None, where: str = "the manifest"):
    """(the head object for `dae.heads.trainer.train`, its leaderboard labels) after checking the inputs."""
    from dae.heads.multipath.fitters import difficulty_of

    options = options if isinstance(options, ExemplarOptions) else ExemplarOptions()
    options.check()
    if head not in EXEMPLAR_HEADS:
        raise UsageError(f"unknown exemplar head {head!r} (choose from {', '.join(EXEMPLAR_HEADS)})")
    if head == "core" and config.prediction != "mu":
        raise UsageError("head core predicts a point (its tree's argmax leaf), not a distribution: "
                         f"--predict {config.prediction} does not apply")
    with_dd = uses_dd(options, manifest, dataset, where)
    difficulty = difficulty_of(manifest, head, where) if with_dd else None
    rule = "same-difficulty" if with_dd else "any"
    scores = manifest["score"].to_numpy(np.float64)
    exemplar = exemplar_targets(jobs, scores, score_range, rule, difficulty, dataset)
    cls = CoRe if head == "core" else DAECoRe
    obj = cls(features, targets, exemplar, options.voters, config.prediction, extra_voters=options.extra_voters)
    thetas = sorted(set(exemplar.theta.round(6)))
    labels = {"voters": options.voters, "exemplar_rule": rule, "uses_difficulty": "yes" if with_dd else "no",
              "theta": ", ".join(f"{t:g}" for t in thetas) if with_dd else "score range",
              "head_note": CORE_NOTE if head == "core" else DAE_CORE_NOTE}
    if head == "core":
        labels.update({"loss": "tree-nll+mse", "distribution": "", "reparam": "", "prediction": "mu"})
    return obj, labels


def fit_exemplar_heads(head: str, features, manifest: pd.DataFrame, targets, jobs, config, score_range,
                       dataset: str = "", options: ExemplarOptions | None = None, where: str = "the manifest",
                       on_start=None, progress=None):
    """Train `head` for every job. Returns (results, row labels for the leaderboard)."""
    from dae.heads.trainer import train

    obj, labels = make_exemplar_head(head, features, manifest, targets, jobs, config, score_range, dataset, options,
                                     where)
    if on_start:
        on_start()
    return train(obj, jobs, config, progress), labels


def exemplar_outputs(blob: dict, weights: dict, x, spec: dict, context: dict):
    """The registry's rebuild for `dae predict`: one saved core/dae-core model's (mu, scale or None), voted by the
    training videos kept in its weights (context: the videos' difficulty or None, the run's voter count)."""
    from dae.heads.contrastive.models import score_new_videos

    mu, scale = score_new_videos(blob["head"], {"spec": spec, "state_dict": weights["state_dict"]}, x.numpy(),
                                 context["difficulty"], blob["score_range"], blob["train"], context["voters"])
    return np.asarray(mu, np.float64), None if scale is None else np.asarray(scale, np.float64)


def fit_exemplars(inputs):
    """The registry's fitter of the exemplar heads: inputs is a `dae.heads.registry.FitInputs`."""
    return fit_exemplar_heads(inputs.plan.head, inputs.x, inputs.manifest, inputs.targets, inputs.jobs, inputs.config,
                              inputs.score_range, inputs.plan.dataset, inputs.plan.head_options, inputs.manifest_name,
                              on_start=inputs.announce, progress=inputs.progress)
