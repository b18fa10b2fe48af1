"""The one registry of score heads: name -> what the head is, what it can do, its defaults, how it trains and how a
run folder's saved model scores new features. Torch-free at import (the CLI lists its choices from it); the heavy
modules are named as "module:function" and imported only when a head is used.

Adding a head: write its module (a head of the stacked trainer, `dae.heads.trainer`) and add one `Head` entry to
HEADS below. `fit` is called by `dae fit` and every study as fit(inputs) -> (results, row labels), inputs being a
`FitInputs` (below, filled by the pipeline); `outputs` is called by `dae predict` (and its calibrated intervals) as
outputs(blob, weights, x, spec, context) -> (mu, scale or None), in normalised units, for one saved model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from dae.errors import UsageError

# CoRe's base_lr: its regressor's rate (its backbone trains at 0.1x; ours is frozen). The trainer's default
# (dae.heads.config.TrainConfig.lr) is every other head's.
CORE_LR = 1e-3
DEFAULT_VOTERS = 10  # CoRe's voter_number: training exemplars that vote for each test video


@dataclass(frozen=True)
class Head:
    """One registered head.

    spread: it predicts a score distribution whose spread some loss trains (False: a point; its intervals come
    from conformal calibration alone). inputs: "pooled" (one feature per video) or "sequence" (clip sequences,
    schema 2). exemplar: a test video is scored against training exemplars kept in the model. needs: manifest
    columns it reads besides the score ("difficulty", "judges"). lr: its own default learning rate (None: the
    trainer's). recipe: the named recipe `--recipe` uses by default (None: the project's defaults). loss_grid: the
    loss / distribution / reparameterisation options apply (a study's grid can vary them). dae_objective: it trains
    the DAE objective (--loss, --reparam, --alpha, --beta and --predict shape it). own_scale: it maps scores through
    its own bins, judges or exemplars rather than regressing the normalised score (--target-scale does not apply).
    score_bins: a softmax over score bins (--bin-std, --bin-predict; --bins where the judges' scale does not fix
    them). backbone: the sequence method whose backbone it trains (its transformer, grade queries and options).
    pooling: how it turns a video's clips into a score, as `dae ablate pooling` names it (None: not in that study).
    dae.pipeline.option_use derives which of `dae fit`'s options each head reads from these."""

    name: str
    summary: str
    fit: str
    outputs: str
    spread: bool = True
    inputs: str = "pooled"
    exemplar: bool = False
    needs: tuple = ()
    lr: float | None = None
    recipe: str | None = None
    loss_grid: bool = False
    family: str = ""  # heads built the same way (for readers; nothing dispatches on it)
    fixed_loss: str | None = None  # the one loss it trains whatever --loss says (mlp: sup)
    closed_form: bool = False  # fitted without epochs or randomness (ridge): seeds would be copies of one model
    base: str | None = None  # the method it is the DAE plug-in of: it also trains that head's named recipes
    dae_objective: bool = False
    own_scale: bool = False
    score_bins: bool = False
    backbone: str | None = None
    pooling: str | None = None

    def capabilities(self) -> str:
        parts = ["spread" if self.spread else "point", self.inputs]
        if self.exemplar:
            parts.append("exemplar")
        parts += [f"needs {n}" for n in self.needs]
        return ", ".join(parts)

    def load(self, what: str):
        """The function named by `fit` or `outputs` (imported now)."""
        module, name = getattr(self, what).split(":")
        return getattr(importlib.import_module(module), name)


@dataclass
class FitInputs:
    """What a head's fitter (`Head.fit`) gets, filled by `dae fit` (dae.pipeline.fit): the plan, the feature set
    (fs), x: the pooled features in the manifest's order, the manifest, normalised targets, the jobs, the training
    config (windowed selections already turned into `last`), the score range, announce() to call just before
    training, the trainer's progress; sequences: (clips, starts, lengths) aligned to the manifest for a sequence head
    (inputs == "sequence"), else None. The heads never read the feature file themselves."""

    plan: object
    fs: object
    x: object
    manifest: object
    targets: object
    jobs: list
    config: object
    score_range: tuple
    manifest_name: str
    announce: object
    progress: object
    sequences: object = None


# every fitter and rebuilder lives in heads/ (the registry names no module downstream of it)
_POOLED = "dae.heads.pooled.fitters"
_PATHS = "dae.heads.multipath.fitters"
_EXEMPLARS = "dae.heads.contrastive.fitters"
_SEQUENCE = "dae.heads.sequence.fitters"

HEADS = {h.name: h for h in (
    Head("dae", "the Distribution Auto-Encoder: an MLP encodes a video into N(mu, sigma^2), trained by "
         "reparameterised reconstruction", f"{_POOLED}:fit_dae_jobs", f"{_POOLED}:mlp_outputs", loss_grid=True,
         family="pooled", dae_objective=True, pooling="mean"),
    Head("mlp", "same trunk, plain regression on mu (loss sup)", f"{_POOLED}:fit_dae_jobs", f"{_POOLED}:mlp_outputs",
         spread=False, family="pooled", fixed_loss="sup", pooling="mean"),
    Head("ridge", "closed-form ridge, penalty by cross-validation on train", f"{_POOLED}:fit_ridge_jobs",
         f"{_POOLED}:ridge_outputs", spread=False, family="pooled", closed_form=True, pooling="mean"),
    Head("usdl", "softmax over score bins, Gaussian label smoothing, KL loss", f"{_PATHS}:fit_paths",
         f"{_PATHS}:path_outputs", family="paths", own_scale=True, score_bins=True),
    Head("musdl", "one usdl path per judge combined by the scoring rule", f"{_PATHS}:fit_paths",
         f"{_PATHS}:path_outputs", needs=("judges",), family="paths", own_scale=True, score_bins=True),
    Head("dae-mt", "DAE on the execution part times the difficulty", f"{_PATHS}:fit_paths", f"{_PATHS}:path_outputs",
         needs=("difficulty",), family="paths", dae_objective=True, own_scale=True),
    Head("dae-judges", "one DAE Gaussian per judge combined by the scoring rule", f"{_PATHS}:fit_paths",
         f"{_PATHS}:path_outputs", needs=("judges",), family="paths", dae_objective=True, own_scale=True),
    Head("core", "CoRe's group-aware regression tree on pairs (exemplar, query), test score voted by exemplars",
         f"{_EXEMPLARS}:fit_exemplars", f"{_EXEMPLARS}:exemplar_outputs", spread=False, exemplar=True, lr=CORE_LR,
         family="exemplar", own_scale=True),
    Head("dae-core", "ours: a DAE head on CoRe's pair feature, the voters' Gaussian mixture",
         f"{_EXEMPLARS}:fit_exemplars", f"{_EXEMPLARS}:exemplar_outputs", exemplar=True, lr=CORE_LR,
         loss_grid=True, family="exemplar", base="core", dae_objective=True, own_scale=True),
    Head("attn-dae", "attention pooling over clips into the DAE", f"{_SEQUENCE}:fit_sequence_jobs",
         f"{_SEQUENCE}:sequence_outputs", inputs="sequence", family="sequence", dae_objective=True,
         pooling="attention"),
    Head("gdlt", "GDLT (CVPR 2022) as its code does it", f"{_SEQUENCE}:fit_sequence_jobs",
         f"{_SEQUENCE}:sequence_outputs",
         spread=False, inputs="sequence", family="sequence", backbone="gdlt",
         pooling="transformer + grade queries, Likert score"),
    Head("gdlt-dae", "GDLT's decoder with the DAE head in place of its Likert scorer", f"{_SEQUENCE}:fit_sequence_jobs",
         f"{_SEQUENCE}:sequence_outputs", inputs="sequence", family="sequence", base="gdlt", dae_objective=True,
         backbone="gdlt", pooling="transformer + grade queries, DAE head"),
    Head("cofinal", "CoFInAl (IJCAI 2024) as its authors' code computes it per video: coarse grades + ETF fine grade",
         f"{_SEQUENCE}:fit_sequence_jobs", f"{_SEQUENCE}:sequence_outputs", spread=False, inputs="sequence",
         family="sequence", backbone="cofinal", pooling="transformer + grade queries, coarse grades + ETF fine grade"),
    Head("cofinal-dae", "ours: the DAE head on CoFInAl's decoded grade queries", f"{_SEQUENCE}:fit_sequence_jobs",
         f"{_SEQUENCE}:sequence_outputs", inputs="sequence", family="sequence", base="cofinal", dae_objective=True,
         backbone="cofinal", pooling="transformer + grade queries, CoFInAl losses + DAE head"),
)}

NAMES = tuple(HEADS)
EXEMPLAR_HEADS = tuple(n for n, h in HEADS.items() if h.exemplar)
SEQUENCE_INPUT_HEADS = tuple(n for n, h in HEADS.items() if h.inputs == "sequence")
POINT_HEADS = tuple(n for n, h in HEADS.items() if not h.spread)
# the heads `dae ablate pooling` compares, each with how it pools a video's clips
POOLING = {n: h.pooling for n, h in HEADS.items() if h.pooling}
# heads a study's grid of losses x distributions x reparameterisations can train (dae-core: Gaussian only)
STUDY_HEADS = tuple(n for n, h in HEADS.items() if h.loss_grid)


def get_head(name: str) -> Head:
    if name not in HEADS:
        raise UsageError(f"unknown head {name!r} (choose from {', '.join(HEADS)})")
    return HEADS[name]


def default_lr(name: str) -> float:
    """The head's default learning rate: its own, else the trainer's."""
    from dae.heads.config import TrainConfig

    own = get_head(name).lr
    return own if own is not None else TrainConfig().lr


def help_text() -> str:
    """The heads as --head's help lists them: 'name: summary' joined."""
    return "; ".join(f"{h.name}: {h.summary}" for h in HEADS.values())


def trains_recipes_of(name: str, recipe_head: str) -> bool:
    """Head `name` trains the recipes written for `recipe_head`: its own, or its base method's (a DAE plug-in, e.g.
    gdlt-dae takes gdlt's recipes: the recipe sets the backbone's training, the DAE head replaces the scorer)."""
    return name == recipe_head or get_head(name).base == recipe_head


def recipes_of(name: str) -> list[str]:
    """The named recipes (`dae.heads.recipes`) that train head `name` (its base method's too)."""
    from dae.heads.recipes import load_recipes

    return sorted(r.name for r in load_recipes().values() if trains_recipes_of(name, r.head))


def format_heads() -> str:
    """`dae heads`: one line per head with its capabilities, default learning rate, default recipe (none: the
    project's defaults) and the named recipes that train it."""
    from dae.heads.config import TrainConfig

    width = max(len(n) for n in HEADS)
    lines = [f"{'head':<{width}}  {'capabilities':<34}  {'lr':>6}  {'default recipe':<14}  recipes"]
    for h in HEADS.values():
        lr = "-" if h.closed_form else f"{h.lr if h.lr is not None else TrainConfig().lr:g}"
        lines.append(f"{h.name:<{width}}  {h.capabilities():<34}  {lr:>6}  {h.recipe or '-':<14}  "
                     f"{', '.join(recipes_of(h.name)) or '-'}")
        lines.append(f"{'':<{width}}  {h.summary}")
    lines.append("lr: the default learning rate (--lr overrides); default recipe '-': the project's defaults (`dae fit "
                 "--help`); recipes: `dae fit --recipe NAME`")
    return "\n".join(lines)
