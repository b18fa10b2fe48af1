"""The multi-path heads of `dae fit` (usdl, musdl, dae-mt, dae-judges): their inputs from a manifest and card.

Each head reads more than the score: `dae-mt` the difficulty column, `musdl` and `dae-judges` the judges'
columns judge_1..judge_K and the dataset's scoring rule. The dataset card (`--dataset`) gives the judges'
scale (range, step) and the rule; without a card the scale is the judges' observed min..max and smallest
step and the rule is the one that reproduces the most manifest scores (`sum` or `middle3-x-difficulty`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dae.errors import UsageError
from dae.heads.multipath.bins import BIN_RULES, DEFAULT_STD_BINS, MUSDL, USDL, USDL_BINS
from dae.heads.multipath.dae_mt import DAEMT, execution_scale
from dae.heads.distributions import get_distribution
from dae.heads.multipath.judges import JUDGE_RULES, USES_DIFFICULTY, DAEJudges, combine
from dae.heads.multipath.models import train_path_heads
from dae.heads.registry import HEADS
from dae.heads.spec import HeadSpec

# the heads registered with this module's fitter
PATH_HEADS = tuple(n for n, h in HEADS.items() if h.fit == f"{__name__}:fit_paths")
STD_BINS_BY_DATASET = {"jigsaws": 1.0}  # the MUSDL code's --std: 5 bins for MTL-AQA, 1 for JIGSAWS
USDL_BINS_BY_DATASET = {"jigsaws": 25}  # the MUSDL code's JIGSAWS USDL: one bin per integer score 6..30
RULE_TOLERANCE = 0.051  # published scores are rounded to 0.1 or 0.05


@dataclass(frozen=True)
class HeadOptions:
    """Options of the bin and judge heads; None means: from the dataset card, else from the data."""

    bins: int | None = None  # usdl: default 101, jigsaws 25
    bin_std: float | None = None
    bin_rule: str = "argmax"
    judge_rule: str | None = None

    def check(self):
        if self.bin_rule not in BIN_RULES:
            raise UsageError(f"unknown bin prediction rule {self.bin_rule!r} (choose from {', '.join(BIN_RULES)})")
        if self.judge_rule is not None and self.judge_rule not in JUDGE_RULES:
            raise UsageError(f"unknown judge rule {self.judge_rule!r} (choose from {', '.join(JUDGE_RULES)})")
        if self.bins is not None and self.bins < 2:
            raise UsageError(f"--bins must be >= 2, got {self.bins}")
        if self.bin_std is not None and not self.bin_std > 0:
            raise UsageError(f"--bin-std must be > 0 bins, got {self.bin_std}")


def _card(dataset: str):
    from dae.data_manifests.cards import card_names, load_card

    return load_card(dataset) if dataset in card_names() else None


def judge_columns(manifest: pd.DataFrame) -> list[str]:
    """judge_1, judge_2, ... as far as they run without a gap."""
    cols, k = [], 1
    while f"judge_{k}" in manifest.columns:
        cols.append(f"judge_{k}")
        k += 1
    return cols


def judge_marks(manifest: pd.DataFrame, head: str, where: str) -> np.ndarray:
    cols = judge_columns(manifest)
    if not cols:
        raise UsageError(f"head {head} needs the judges' columns judge_1..judge_K (MTL-AQA, JIGSAWS, FineDiving "
                         f"manifests have them); {where} has none")
    marks = manifest[cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(marks) & manifest[cols].notna().to_numpy()
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise UsageError(f"{where}: video {manifest['video_id'].iloc[i]!r}, column {cols[j]}: "
                         f"{manifest[cols[j]].iloc[i]!r} is not a number")
    return marks


def difficulty_of(manifest: pd.DataFrame, head: str, where: str) -> np.ndarray:
    if "difficulty" not in manifest.columns:
        raise UsageError(f"head {head} needs a difficulty column; {where} has none")
    dd = pd.to_numeric(manifest["difficulty"], errors="coerce").to_numpy(np.float64)
    bad = ~(np.isfinite(dd) & (dd > 0))
    if bad.any():
        raise UsageError(f"head {head} needs a positive difficulty for every video; {where}: video "
                         f"{manifest['video_id'].iloc[np.flatnonzero(bad)[0]]!r} has {manifest['difficulty'].iloc[np.flatnonzero(bad)[0]]!r}")
    return dd


def infer_rule(marks, difficulty, scores) -> tuple[str, float]:
    """The rule (of `sum`, `middle3-x-difficulty`) that reproduces the most scores, and that share."""
    best = ("sum", -1.0)
    for rule in ("sum", "middle3-x-difficulty"):
        if USES_DIFFICULTY[rule] and difficulty is None:
            continue
        share = float(np.mean(np.abs(combine(marks, difficulty, rule) - scores) <= RULE_TOLERANCE))
        best = max(best, (rule, share), key=lambda b: b[1])
    return best


@dataclass
class JudgeSetup:
    marks: np.ndarray
    judge_range: tuple
    judge_step: float
    rule: str
    difficulty: np.ndarray | None
    panel_sizes: np.ndarray | None


def judge_setup(manifest, dataset: str, rule: str | None, head: str, where: str) -> JudgeSetup:
    """The judges' marks, scale and rule for musdl / dae-judges (card first, then the data)."""
    marks = judge_marks(manifest, head, where)
    card = _card(dataset)
    has_dd = "difficulty" in manifest.columns
    if card and card.get("judge_count", 0) and card.get("judge_rule", "none") != "none":
        judge_range = tuple(map(float, card["judge_score_range"]))
        step = float(card["judge_score_step"])
        rule = rule or card["judge_rule"]
    else:
        seen = np.unique(marks[~np.isnan(marks)])
        if len(seen) < 2:
            raise UsageError(f"head {head}: the judges' columns of {where} hold fewer than two distinct marks")
        judge_range = (float(seen[0]), float(seen[-1]))
        step = float(np.min(np.diff(seen)))
        if rule is None:
            dd = difficulty_of(manifest, head, where) if has_dd else None
            rule, _ = infer_rule(marks, dd, manifest["score"].to_numpy(float))
    difficulty = difficulty_of(manifest, head, where) if USES_DIFFICULTY.get(rule, False) else None
    panel_sizes = None
    if "n_judges" in manifest.columns:  # FineDiving: the panel is judge_1..judge_<n_judges>, marks or not
        panel_sizes = pd.to_numeric(manifest["n_judges"], errors="coerce").to_numpy()
        if np.isnan(panel_sizes).any():
            raise UsageError(f"{where}: column n_judges must hold a number for every video")
    return JudgeSetup(marks, judge_range, step, rule, difficulty, panel_sizes)


def fit_path_heads(head: str, features, manifest: pd.DataFrame, targets, jobs, config, score_range,
                   dataset: str = "", options: HeadOptions | None = None, where: str = "the manifest",
                   on_start=None, progress=None):
    """Train `head` for every job. Returns (results, row labels for the leaderboard).

    on_start: called once the manifest and options have been checked, just before training; progress: the
    trainer's (`dae.heads.trainer.train`)."""
    options = options or HeadOptions()
    options.check()
    if head not in PATH_HEADS:
        raise UsageError(f"unknown head {head!r} (choose from {', '.join(PATH_HEADS)})")
    scores = manifest["score"].to_numpy(np.float64)
    std_bins = options.bin_std if options.bin_std is not None else STD_BINS_BY_DATASET.get(dataset, DEFAULT_STD_BINS)
    n_bins = options.bins if options.bins is not None else USDL_BINS_BY_DATASET.get(dataset, USDL_BINS)
    if head in ("usdl", "musdl") and config.prediction != "mu":
        raise UsageError(f"head {head} predicts from its bins: use --bin-predict argmax|expectation, not "
                         f"--predict {config.prediction}")
    distributions = {j.spec.distribution for j in jobs}
    if head in ("dae-mt", "dae-judges") and len(distributions) > 1:
        raise UsageError(f"head {head} trains one distribution per run, got {', '.join(sorted(distributions))}")
    distribution = distributions.pop()
    if head in ("dae-mt", "dae-judges") and getattr(get_distribution(distribution), "learned_shape", False):
        raise UsageError(f"head {head} does not learn a distribution's shape; choose a fixed one, not {distribution}")
    reparams = [j.spec.reparam for j in jobs]
    # what `dae predict` needs to rebuild each model's objective on new videos (`path_outputs`), kept in its weights
    setup = {"head": head, "std_bins": std_bins, "bin_rule": options.bin_rule, "distribution": distribution}
    if head == "usdl":
        objective = USDL(targets, n_bins, std_bins, options.bin_rule)
        setup.update(bins=n_bins, uses_difficulty=False)
        labels = {"loss": "kl", "distribution": f"softmax-{n_bins}bins-std{std_bins:g}", "reparam": "",
                  "prediction": options.bin_rule, "uses_difficulty": "no", "judge_rule": ""}
    elif head == "musdl":
        judges = judge_setup(manifest, dataset, options.judge_rule, head, where)
        objective = MUSDL(judges.marks, judges.judge_range, judges.judge_step, score_range, judges.rule,
                          judges.difficulty, std_bins, options.bin_rule, panel_sizes=judges.panel_sizes)
        labels = {"loss": "kl", "distribution": f"softmax-{objective.width}bins-std{std_bins:g}-x{objective.paths}",
                  "reparam": "", "prediction": options.bin_rule,
                  "uses_difficulty": "yes" if USES_DIFFICULTY[judges.rule] else "no", "judge_rule": judges.rule}
        setup.update(_judge_setup_record(judges))
    elif head == "dae-mt":
        dd = difficulty_of(manifest, head, where)
        scales = [execution_scale(scores[j.train_rows], dd[j.train_rows]) for j in jobs]
        objective = DAEMT(targets, dd, score_range, scales, reparams, distribution, config.prediction)
        labels = {"distribution": distribution, "uses_difficulty": "yes", "judge_rule": ""}
        setup.update(uses_difficulty=True)
    else:
        judges = judge_setup(manifest, dataset, options.judge_rule, head, where)
        objective = DAEJudges(judges.marks, judges.judge_range, score_range, judges.rule, judges.difficulty,
                              distribution, reparams, config.prediction, panel_sizes=judges.panel_sizes)
        labels = {"distribution": f"{distribution}-x{objective.paths}",
                  "uses_difficulty": "yes" if USES_DIFFICULTY[judges.rule] else "no", "judge_rule": judges.rule}
        setup.update(_judge_setup_record(judges))
    if on_start:
        on_start()
    results = train_path_heads(features, targets, jobs, objective, config, progress)
    for i, res in enumerate(results):
        res.state_dict["objective"] = {**setup, "reparam": jobs[i].spec.reparam, "epochs": config.epochs,
                                       **({"execution_scale": scales[i]} if head == "dae-mt" else {})}
    return results, labels


def _judge_setup_record(judges: JudgeSetup) -> dict:
    return {"judge_range": [float(v) for v in judges.judge_range], "judge_step": float(judges.judge_step),
            "rule": judges.rule, "judges": int(judges.marks.shape[1]),
            "uses_difficulty": bool(USES_DIFFICULTY[judges.rule])}


def path_outputs(blob: dict, weights: dict, x, spec: dict, context: dict):
    """The registry's rebuild for `dae predict`: one saved path-head model's (mu, scale or None) on features x (N, D),
    normalised units; the objective rebuilt from what `fit_path_heads` kept in its weights, for N new videos
    (context["difficulty"]: their DD, where the head or its judge rule uses it). The full panel of judges is assumed
    (a FineDiving run's n_judges of a new video is not known)."""
    import torch

    from dae.heads.dae import trains_scale
    from dae.heads.multipath.models import StackedPaths

    state, setup = weights["state_dict"], weights["state_dict"]["objective"]
    n_layers = sum(1 for k in state if k.startswith("layers.") and k.endswith(".weight"))
    layer_weights = [state[f"layers.{i}.weight"] for i in range(n_layers)]
    n_paths, width = int(layer_weights[0].shape[0]), int(layer_weights[-1].shape[1])
    net = StackedPaths([int(spec.get("seed", 0))], n_paths, x.shape[1], [int(w.shape[1]) for w in layer_weights[:-1]],
                       width)
    with torch.no_grad():
        for i, w in enumerate(layer_weights):
            net.weights[i].copy_(w)
            net.biases[i].copy_(state[f"layers.{i}.bias"].unsqueeze(-1))
    n = x.shape[0]
    difficulty = context.get("difficulty")
    if setup["uses_difficulty"] and difficulty is None:
        raise UsageError(f"a {setup['head']} run scores with the videos' difficulty: give it (--difficulty)")
    dd = np.asarray(difficulty, np.float64) if setup["uses_difficulty"] else None
    zeros, score_range = np.zeros(n), tuple(blob["score_range"])
    if setup["head"] == "usdl":
        objective = USDL(zeros, setup["bins"], setup["std_bins"], setup["bin_rule"])
    elif setup["head"] == "dae-mt":
        objective = DAEMT(zeros, dd, score_range, [setup["execution_scale"]], [setup["reparam"]],
                          setup["distribution"])
    else:
        lo = float(setup["judge_range"][0])
        marks = np.full((n, setup["judges"]), lo)  # unknown marks: only the panel (all judges) is read
        if setup["head"] == "musdl":
            objective = MUSDL(marks, setup["judge_range"], setup["judge_step"], score_range, setup["rule"], dd,
                              setup["std_bins"], setup["bin_rule"])
        else:
            objective = DAEJudges(marks, setup["judge_range"], score_range, setup["rule"], dd, setup["distribution"],
                                  [setup["reparam"]])
    xs = ((x - weights["input_mean"]) / weights["input_std"]).float()
    with torch.no_grad():
        out = net(xs.unsqueeze(0))
        drawn = objective.distribution(out, torch.arange(n).unsqueeze(0), torch.tensor([0]),
                                       torch.Generator().manual_seed(int(spec.get("seed", 0))))
    scored = not objective.uses_noise or trains_scale(HeadSpec(**{k: v for k, v in spec.items()
                                                                   if k in HeadSpec.__dataclass_fields__}),
                                                      setup["epochs"])
    mu = drawn["mu"][0].double().numpy()
    return mu, (drawn["scale"][0].double().numpy() if scored and drawn.get("scale") is not None else None)


def fit_paths(inputs):
    """The registry's fitter of the path heads: inputs is a `dae.heads.registry.FitInputs`."""
    return fit_path_heads(inputs.plan.head, inputs.x, inputs.manifest, inputs.targets, inputs.jobs, inputs.config,
                          inputs.score_range, inputs.plan.dataset, inputs.plan.head_options, inputs.manifest_name,
                          on_start=inputs.announce, progress=inputs.progress)


def options_dict(options: HeadOptions | None) -> dict | None:
    return dataclasses.asdict(options) if options is not None else None
