"""A training command's plain options (as typed, or as a run folder recorded them) turned into what the library runs.

`dae fit` and `dae ablate STUDY` call `fit_from_options` / `study_from_options` with one dict of options; those
record the dict in the run's config.json, and `replay_options` reads it back so that `--config RUN/config.json`
re-runs exactly that (options given explicitly override it). Importing this module does not import torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from dae.errors import DaeError, UsageError
from dae.heads.calibration_options import DEFAULT_CALIBRATOR, DEFAULT_FOLDS
from dae.heads.config import TrainConfig, parse_target_scale
from dae.heads.registry import DEFAULT_VOTERS, get_head
from dae.heads.sequence.options import SequenceOptions
from dae.heads.spec import HeadSpec
from dae.pipeline.defaults import STUDY_SEEDS

_TRAIN = TrainConfig()
_SEQ = SequenceOptions()
_SPEC = HeadSpec()
# The options' one home: every default below is read from the dataclass that uses it (TrainConfig, HeadSpec,
# SequenceOptions, the calibrators' and the registry's constants), and the click options read theirs from here.
# A study cell trains exactly as `dae fit` trains the same configuration: both build their TrainConfig with
# `train_config` from TRAIN_DEFAULTS (lr None: the head's own, from the registry).
TRAIN_DEFAULTS = {"epochs": _TRAIN.epochs, "lr": None, "weight_decay": _TRAIN.weight_decay,
                  "batch_size": _TRAIN.batch_size, "selection": _TRAIN.selection}
# the optimizer and schedule (heads/optim.py), `dae fit`'s options; a recipe (heads/recipes) sets them too
OPTIM_DEFAULTS = {"optimizer": _TRAIN.optimizer, "momentum": _TRAIN.momentum, "nesterov": _TRAIN.nesterov,
                  "schedule": _TRAIN.schedule, "eta_min": _TRAIN.eta_min, "warmup_epochs": _TRAIN.warmup_epochs,
                  "accumulate": _TRAIN.accumulate}
SPEC_DEFAULTS = {"loss": _SPEC.loss, "reparam": _SPEC.reparam, "alpha": _SPEC.alpha, "beta": _SPEC.beta}
CALIBRATION_DEFAULTS = {"calibrate": DEFAULT_CALIBRATOR, "calibration_folds": DEFAULT_FOLDS}
# A study's default calibrator (issue 23): none, for every `dae ablate` study but calibration (pooling too).
# losses, reparam, robustness and pooling answer a ranking question (Spearman, its seed spread, stability). variance
# and distributions ask how good each configuration's own spread is (raw coverage, sharpness, sigma-error rank, NLL,
# CRPS): a calibrator fitted to each configuration would put every one's coverage90 near 0.9 by construction and
# hide what they compare (the variance verdict's "best calibrated" would compare noise). Calibrated intervals at
# equal coverage are `dae ablate calibration`'s question. Every row's calibration column says none (a setting
# column: never pooled with calibrated rows); --calibrate conformal gives a study cell exactly `dae fit`'s
# intervals, with K fold models per configuration shared by its S seeds (1 + (K-1)/S times the training,
# heads/calibration.fold_jobs).
STUDY_CALIBRATOR = "none"
STUDY_CALIBRATE = dict.fromkeys(("losses", "reparam", "robustness", "variance", "distributions"), STUDY_CALIBRATOR)
# the sequence heads' options (defaults: GDLT's Rhythmic Gymnastics command; its Fis-V recipe is gdlt:fis-v-tes), as
# `dae fit` and `dae ablate pooling` name them
SEQUENCE_DEFAULTS = {"crop": _SEQ.crop, "attention_heads": _SEQ.heads, "queries": _SEQ.queries,
                     "encoder_layers": _SEQ.encoder_layers, "decoder_layers": _SEQ.decoder_layers,
                     "hidden": _SEQ.hidden, "dropout": _SEQ.dropout, "triplet_weight": _SEQ.triplet_weight,
                     "margin": _SEQ.margin, "grade_values": _SEQ.grade_values, "triplet_labels": _SEQ.triplet_labels}
FIT_DEFAULTS = {
    "features": None, "manifest": None, "head": "dae", "voters": DEFAULT_VOTERS, "with_dd": None, "bins": None,
    "bin_std": None, "bin_predict": "argmax", "judge_rule": None, **SPEC_DEFAULTS, "prediction": _TRAIN.prediction,
    **TRAIN_DEFAULTS, **OPTIM_DEFAULTS, "target_scale": "range", "recipe": None, "n_seeds": None, "seed": None,
    "dataset": None, **SEQUENCE_DEFAULTS, **CALIBRATION_DEFAULTS,
}
STUDY_DEFAULTS = {
    "features": None, "manifest": None, "n_seeds": None, "seed": None, **TRAIN_DEFAULTS, "dataset": None,
    "losses": None, "distributions": None, "reparams": None, "jobs": 1, "backend": "loky", "scheduler": None,
    "threads": None, "device": "auto", "head": "dae", **CALIBRATION_DEFAULTS,
}
POOLING_DEFAULTS = {
    "features": None, "manifest": None, "heads": "dae,attn-dae,gdlt,gdlt-dae", "n_seeds": 3,
    "epochs": _TRAIN.epochs, "sequence_epochs": None, "sequence_lr": None, "batch_size": _TRAIN.batch_size,
    "dataset": None, "curves": True, "recipe": None, **CALIBRATION_DEFAULTS, "calibrate": STUDY_CALIBRATOR,
    **SEQUENCE_DEFAULTS,
}
VOTERS_DEFAULTS = {"features": None, "manifest": None, "head": "core", "voter_counts": "1,3,5,10,20", "rules": None,
                   "n_seeds": None, "seed": None, **TRAIN_DEFAULTS, "dataset": None}
CALIBRATION_STUDY_DEFAULTS = {"features": None, "manifest": None, "n_seeds": None, "seed": None, "heads": None,
                              "losses": None, "calibration_folds": DEFAULT_FOLDS, "epochs": _TRAIN.epochs,
                              "lr": None, "batch_size": _TRAIN.batch_size, "dataset": None, "device": "auto"}
# Where results go is never replayed (a run folder is never overwritten; a leaderboard would get its rows twice).
OUTPUTS = ("out", "leaderboard", "plots")
EXCLUSIVE = (("n_seeds", "seed"),)
PATHS = ("features", "manifest")


def seed_list(n_seeds: int | None = None, seed: int | None = None, default_n: int = 1) -> list[int]:
    """--seeds N (seeds 0..N-1) or --seed S (that one seed); neither: seeds 0..default_n-1."""
    if n_seeds is not None and seed is not None:
        raise UsageError("give --seeds N or --seed S, not both")
    if seed is not None:
        return [int(seed)]
    return list(range(n_seeds if n_seeds is not None else default_n))


def card_score_range(dataset: str | None, manifest_path) -> tuple[float, float] | None:
    """The card's score range for the manifest's target (Fis-V TES vs PCS, RG total/D/E); None without a card."""
    if not dataset:
        return None
    import pandas as pd

    from dae.data_manifests.cards import score_range

    head = pd.read_csv(manifest_path, nrows=1) if manifest_path else None
    target = str(head["target"].iloc[0]) if head is not None and "target" in head and len(head) else None
    return tuple(score_range(dataset, target))


def csv_list(value: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; empty or None -> None (the study's own list)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _require_inputs(options: dict) -> None:
    for name in PATHS:
        if not options.get(name):
            raise UsageError(f"missing option --{name} (or give --config RUN/config.json to replay a run)")


def _recordable(options: dict) -> dict:
    """The options as a run folder records them: input paths absolute, output locations left out."""
    kept = {k: v for k, v in options.items() if k not in OUTPUTS}
    for name in PATHS:
        if kept.get(name):
            kept[name] = os.path.abspath(kept[name])
    return kept


def sequence_options_of(options: dict) -> SequenceOptions:
    """SequenceOptions from the command's sequence options (SEQUENCE_DEFAULTS' keys; others ignored)."""
    o = {**SEQUENCE_DEFAULTS, **{k: v for k, v in options.items() if k in SEQUENCE_DEFAULTS}}
    values = {k: v for k, v in o.items() if k != "attention_heads"}
    options = SequenceOptions(heads=o["attention_heads"], **values)
    options.check()
    return options


def fit_plan(options: dict):
    """The FitPlan (head specs per seed, TrainConfig, head options, score range) for `dae fit`'s options."""
    from dae.heads.multipath.fitters import HeadOptions
    from dae.heads.contrastive.fitters import ExemplarOptions
    from dae.pipeline.fit import FitPlan

    o = {**FIT_DEFAULTS, **options}
    specs = [HeadSpec(seed=s, loss=o["loss"], reparam=o["reparam"], alpha=o["alpha"], beta=o["beta"])
             for s in seed_list(o["n_seeds"], o["seed"])]
    config = train_config(o, o["head"])
    # inconsistent optimizer settings fail here, before any file is read; a windowed test-set selection (last10,
    # best10-consecutive) trains to the last epoch and is applied by fit (pipeline.selection_windows), so it is checked there
    from dae.pipeline.selection_windows import WINDOW_SELECTIONS

    windowed = config.selection in WINDOW_SELECTIONS
    (dataclasses.replace(config, selection="last") if windowed else config).check()
    entry = get_head(o["head"])
    parse_target_scale(o["target_scale"])
    if o["target_scale"] != "range" and entry.own_scale:
        raise UsageError(f"--target-scale {o['target_scale']} is for heads that regress the normalised score; "
                         f"{o['head']} maps scores through its own bins, judges or exemplars")
    head_options = (ExemplarOptions(voters=o["voters"], with_dd=o["with_dd"]) if entry.exemplar else
                    sequence_options_of(o) if entry.inputs == "sequence" else
                    HeadOptions(bins=o["bins"], bin_std=o["bin_std"], bin_rule=o["bin_predict"],
                                judge_rule=o["judge_rule"]))
    return FitPlan(head=o["head"], specs=specs, config=config, dataset=o["dataset"] or "",
                   score_range=card_score_range(o["dataset"], o["manifest"]), head_options=head_options,
                   calibrate=o["calibrate"], calibration_folds=o["calibration_folds"],
                   target_scale=o["target_scale"], recipe=o["recipe"] or "")


def manifest_target(manifest_path) -> str | None:
    """The manifest's `target` column's value (Fis-V tes / pcs, RG total / difficulty / execution), if it has one."""
    import pandas as pd

    try:
        head = pd.read_csv(manifest_path, nrows=1)
    except (OSError, ValueError):
        return None  # unreadable: run_fit says so in its own words
    return str(head["target"].iloc[0]).lower() if "target" in head and len(head) else None


def apply_recipe(options: dict, explicit) -> dict:
    """`options` with recipe options["recipe"]'s settings in place of every option not given explicitly (names in
    `explicit`); the recipe sets the head (an explicit --head may be its DAE plug-in, e.g. gdlt-dae with a gdlt
    recipe: the registry's `base`) and, when not given, the dataset. Usage errors (nothing is written): an unknown
    recipe, an explicit --head or --dataset other than the recipe's, a manifest of another target."""
    from dae.heads.recipes import get_recipe
    from dae.heads.registry import HEADS, trains_recipes_of

    recipe = get_recipe(options["recipe"])
    recipe.check_runnable()
    explicit = set(explicit)
    if "head" in explicit and not trains_recipes_of(options["head"], recipe.head):
        plug_ins = [n for n, h in HEADS.items() if h.base == recipe.head]
        also = f" or its DAE plug-in {', '.join(plug_ins)}" if plug_ins else ""
        raise UsageError(f"recipe {recipe.name} trains head {recipe.head}{also}, not --head {options['head']} "
                         f"(leave --head out, or pick a {options['head']} recipe: `dae recipes`)")
    if options.get("dataset") and options["dataset"] != recipe.dataset:
        raise UsageError(f"recipe {recipe.name} is for dataset {recipe.dataset}, not --dataset {options['dataset']}")
    target = manifest_target(options["manifest"]) if options.get("manifest") else None
    if recipe.target and target and target != recipe.target:
        raise UsageError(f"recipe {recipe.name} is for the {recipe.target} target; the manifest's target is {target}")
    unknown = sorted(set(recipe.settings) - set(FIT_DEFAULTS))
    if unknown:
        raise DaeError(f"recipe {recipe.name} sets {', '.join(unknown)}, which dae fit does not have")
    # the head given, or a replayed run's (--config) when it trains this recipe (a plug-in's run keeps its head)
    head = options["head"] if options.get("head") and trains_recipes_of(options["head"], recipe.head) else recipe.head
    merged = {**options, "head": head, "dataset": options.get("dataset") or recipe.dataset}
    merged.update({k: v for k, v in recipe.settings.items() if k not in explicit})
    # an explicit optimizer or schedule replaces the recipe's, with the settings that only the recipe's one takes
    if "optimizer" in explicit and merged["optimizer"] != "sgd":
        merged.update({k: FIT_DEFAULTS[k] for k in ("momentum", "nesterov") if k not in explicit})
    if "schedule" in explicit and merged["schedule"] != "cosine" and "eta_min" not in explicit:
        merged["eta_min"] = FIT_DEFAULTS["eta_min"]
    return merged


def fit_options(options: dict, explicit, config_path=None) -> dict:
    """`dae fit`'s options as it runs them: a replayed run's (`replay_options`), then the recipe's settings where
    --recipe is given (a replayed run already records the settings its recipe gave it, overrides included)."""
    merged = replay_options(options, explicit, config_path, "fit")
    if merged.get("recipe") and (not config_path or "recipe" in set(explicit)):
        merged = apply_recipe(merged, explicit)
    elif merged.get("recipe") and "head" in set(explicit):
        from dae.heads.recipes import get_recipe
        from dae.heads.registry import trains_recipes_of

        # the rows would name a recipe of another head (its DAE plug-in may take it)
        if not trains_recipes_of(merged["head"], get_recipe(merged["recipe"]).head):
            raise UsageError(f"--config records recipe {merged['recipe']}, which trains head "
                             f"{get_recipe(merged['recipe']).head}, not --head {merged['head']}")
    return merged


def fit_from_options(options: dict, echo=print):
    """`dae fit`: train what `options` (FIT_DEFAULTS' keys, plus out and leaderboard) describe. Returns run_fit's."""
    from dae.pipeline.fit import run_fit

    options = {**FIT_DEFAULTS, **options}
    _require_inputs(options)
    return run_fit(options["features"], options["manifest"], fit_plan(options), out=options.get("out"),
                   leaderboard=options.get("leaderboard"), echo=echo, options=_recordable(options))


# TrainConfig fields no command option sets (a command's `hidden` is the sequence heads' width, not the MLP's)
_NOT_TRAIN_OPTIONS = ("hidden", "track_curves", "standardize", "device")


def train_config(options: dict, head: str, **fixed) -> TrainConfig:
    """The TrainConfig of `dae fit` and of every study cell of `head`: each TrainConfig field the options name (None:
    its default), the learning rate the head's own when not given (`dae.heads.registry`); `fixed` overrides."""
    import dataclasses

    values = {f.name: options[f.name] for f in dataclasses.fields(TrainConfig)
              if f.name not in _NOT_TRAIN_OPTIONS and options.get(f.name) is not None}
    values["lr"] = options.get("lr") or get_head(head).lr or _TRAIN.lr
    return TrainConfig(**{**values, **fixed})


def study_config(options: dict, head: str = "dae") -> TrainConfig:
    """The TrainConfig of a study's cells of `head`: fit's (`train_config`), the device resolved."""
    from dae.devices import resolve_device

    o = {**STUDY_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    return train_config(o, head, device=str(resolve_device(o["device"])))


def study_from_options(study: str, options: dict, echo=print):
    """`dae ablate STUDY`: run the study that `options` (STUDY_DEFAULTS' keys, plus out, leaderboard, plots) describe."""
    from dae.pipeline.studies.ablate import run_study_files

    options = {**STUDY_DEFAULTS, "calibrate": STUDY_CALIBRATE.get(study, DEFAULT_CALIBRATOR), **options}
    _require_inputs(options)
    o = options
    return run_study_files(study, o["features"], o["manifest"], seed_list(o["n_seeds"], o["seed"], STUDY_SEEDS),
                           study_config(o, o["head"]), dataset=o["dataset"] or "",
                           score_range=card_score_range(o["dataset"], o["manifest"]),
                           losses=csv_list(o["losses"]), distributions=csv_list(o["distributions"]),
                           reparams=csv_list(o["reparams"]), out=o.get("out"), leaderboard=o.get("leaderboard"),
                           plots=o.get("plots"), n_jobs=o["jobs"], backend=o["backend"], scheduler=o["scheduler"],
                           threads=o["threads"], echo=echo, head=o["head"], calibrate=o["calibrate"],
                           calibration_folds=o["calibration_folds"],
                           options={"study": study, **_recordable(o)})


def pooling_from_options(options: dict, echo=print, explicit=(), config_path=None):
    """`dae ablate pooling`: pooled heads at fit's settings, sequence heads at their own budget, on the same cells;
    --recipe's heads at their recipes (`studies.pooling.recipe_cells`: the options in `explicit`, and those a replayed
    study (`config_path`) recorded as overriding its recipe, override it)."""
    from dae.heads.sequence.options import SEQUENCE_EPOCHS, SEQUENCE_LR
    from dae.pipeline.studies.pooling import RECIPE_OVERRIDES, recipe_cells, recipe_dataset, run_pooling_files

    o = {**POOLING_DEFAULTS, **options}
    _require_inputs(o)
    explicit = set(explicit) | set(recorded_options(config_path, "pooling").get("recipe_overrides") or ()
                                   if config_path else ())
    recipes = csv_list(o["recipe"])
    o["dataset"] = o["dataset"] or recipe_dataset(recipes)
    cells = recipe_cells(recipes, csv_list(o["heads"]), o, explicit)
    overrides = sorted(k for k in explicit if k in RECIPE_OVERRIDES) if recipes else []
    config = train_config({"epochs": o["epochs"], "batch_size": o["batch_size"]}, "dae")
    sequence_config = TrainConfig(epochs=o["sequence_epochs"] or SEQUENCE_EPOCHS, lr=o["sequence_lr"] or SEQUENCE_LR,
                                  batch_size=o["batch_size"])
    return run_pooling_files(o["features"], o["manifest"], list(range(o["n_seeds"])), config, sequence_config,
                             sequence_options_of(o), heads=csv_list(o["heads"]), dataset=o["dataset"] or "",
                             score_range=card_score_range(o["dataset"], o["manifest"]), out=o.get("out"),
                             leaderboard=o.get("leaderboard"), curves=o["curves"], echo=echo,
                             command_options={"study": "pooling", **_recordable(o), "recipe_overrides": overrides},
                             calibrate=o["calibrate"], calibration_folds=o["calibration_folds"], recipes=cells)


def voters_from_options(options: dict, echo=print):
    """`dae ablate voters`: each exemplar rule trains its seeds once; the same models vote with every count."""
    from dae.pipeline.fit import FitPlan
    from dae.pipeline.studies.voters import run_voters_study_files

    o = {**VOTERS_DEFAULTS, **options}
    _require_inputs(o)
    try:
        counts = [int(v) for v in csv_list(o["voter_counts"]) or []]
    except ValueError:
        raise UsageError(f"--voters takes comma-separated integers, got {o['voter_counts']!r}") from None
    specs = [HeadSpec(seed=s) for s in seed_list(o["n_seeds"], o["seed"], STUDY_SEEDS)]
    config = train_config(o, o["head"])
    plan = FitPlan(head=o["head"], specs=specs, config=config, dataset=o["dataset"] or "",
                   score_range=card_score_range(o["dataset"], o["manifest"]))
    return run_voters_study_files(o["features"], o["manifest"], plan, counts, csv_list(o["rules"]), out=o.get("out"),
                                  leaderboard=o.get("leaderboard"), echo=echo,
                                  options={"study": "voters", **_recordable(o)})


def calibration_from_options(options: dict, echo=print):
    """`dae ablate calibration`: every head x calibrator, each head trained as `dae fit` trains it."""
    from dae.pipeline.studies.calibration import run_calibration_study_files

    o = {**CALIBRATION_STUDY_DEFAULTS, **options}
    _require_inputs(o)
    return run_calibration_study_files(o["features"], o["manifest"], seed_list(o["n_seeds"], o["seed"], STUDY_SEEDS),
                                       study_config(o), dataset=o["dataset"] or "",
                                       score_range=card_score_range(o["dataset"], o["manifest"]),
                                       losses=csv_list(o["losses"]), heads=csv_list(o["heads"]),
                                       folds=o["calibration_folds"], out=o.get("out"),
                                       leaderboard=o.get("leaderboard"), plots=o.get("plots"), echo=echo,
                                       lr=o["lr"], options={"study": "calibration", **_recordable(o)})


def recorded_options(config_path, command: str) -> dict:
    """The options a run folder's config.json recorded for `command` ('fit' or a study's name)."""
    path = Path(config_path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DaeError(f"--config {config_path}: no such file (give a run folder's config.json)") from None
    except (OSError, ValueError) as exc:
        raise DaeError(f"--config {config_path}: not a readable config.json ({exc})") from None
    options = config.get("options") if isinstance(config, dict) else None
    if not isinstance(options, dict):
        raise DaeError(f"--config {path}: records no command options (written by a dae before replay existed)")
    recorded = options.get("study", "fit")
    if recorded != command:
        what = "dae fit" if recorded == "fit" else f"dae ablate {recorded}"
        raise UsageError(f"--config {path} records a `{what}` run, not `{'dae fit' if command == 'fit' else 'dae ablate ' + command}`")
    return {k: v for k, v in options.items() if k != "study"}


def replay_options(options: dict, explicit, config_path=None, command: str = "fit") -> dict:
    """`options` (every option's value, defaults included) with, under --config, the recorded run's options in
    place of those not given explicitly (names in `explicit`). Output locations are never taken from the record."""
    if not config_path:
        return dict(options)
    explicit = set(explicit)
    recorded = recorded_options(config_path, command)
    for group in EXCLUSIVE:  # --seed given explicitly replaces a recorded --seeds, and the other way round
        if explicit & set(group):
            for name in group:
                recorded.pop(name, None)
    merged = {**options, **{k: v for k, v in recorded.items() if k in options and k not in OUTPUTS}}
    merged.update({k: options[k] for k in explicit if k in options})
    return merged
