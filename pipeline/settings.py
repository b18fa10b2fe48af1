"""A training command's plain options (as typed, or as a run folder recorded them) turned into what the library runs.

`dae fit` and `dae ablate STUDY` call `fit_from_options` / `study_from_options` with one dict of options; those
record the dict in the run's config.json, and `replay_options` reads it back so that `--config RUN/config.json`
re-runs exactly that (options given explicitly override it). Importing this module does not import torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from dae.errors import DaeError, UsageError
from dae.heads.config import TrainConfig
from dae.heads.sequence_options import SEQUENCE_HEADS, SequenceOptions
from dae.pipeline.defaults import STUDY_BATCH_SIZE, STUDY_LR, STUDY_SEEDS

_TRAIN = TrainConfig()
_SEQ = SequenceOptions()
# the sequence heads' options (GDLT's defaults), as `dae fit` and `dae ablate pooling` name them
SEQUENCE_DEFAULTS = {"crop": _SEQ.crop, "attention_heads": _SEQ.heads, "queries": _SEQ.queries,
                     "encoder_layers": _SEQ.encoder_layers, "decoder_layers": _SEQ.decoder_layers,
                     "hidden": _SEQ.hidden, "dropout": _SEQ.dropout, "triplet_weight": _SEQ.triplet_weight,
                     "margin": _SEQ.margin}
FIT_DEFAULTS = {
    "features": None, "manifest": None, "head": "dae", "voters": 10, "with_dd": None, "bins": None, "bin_std": None,
    "bin_predict": "argmax", "judge_rule": None, "loss": "v1", "reparam": "sigma", "alpha": 0.6, "beta": 0.4,
    "prediction": "mu", "epochs": _TRAIN.epochs, "lr": None,  # None: the head's own (core: 1e-3), else the trainer's
    "weight_decay": _TRAIN.weight_decay, "batch_size": _TRAIN.batch_size,
    "n_seeds": None, "seed": None, "selection": _TRAIN.selection, "dataset": None, **SEQUENCE_DEFAULTS,
    "calibrate": "conformal", "calibration_folds": 5,
}
STUDY_DEFAULTS = {
    "features": None, "manifest": None, "n_seeds": None, "seed": None, "epochs": 100, "lr": STUDY_LR,
    "batch_size": STUDY_BATCH_SIZE, "weight_decay": 0.0, "selection": "last", "dataset": None, "losses": None,
    "distributions": None, "reparams": None, "jobs": 1, "backend": "loky", "scheduler": None, "threads": None,
    "device": "auto", "head": "dae", "calibrate": "conformal", "calibration_folds": 5,
}
POOLING_DEFAULTS = {
    "features": None, "manifest": None, "heads": "dae,attn-dae,gdlt,gdlt-dae", "n_seeds": 3, "epochs": 100,
    "sequence_epochs": None, "sequence_lr": None, "batch_size": 32, "dataset": None, "curves": True,
    "calibrate": "conformal", "calibration_folds": 5, **SEQUENCE_DEFAULTS,
}
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
    from dae.heads.trainer import HeadSpec
    from dae.pipeline.baselines import HeadOptions
    from dae.pipeline.exemplar_heads import EXEMPLAR_HEADS, ExemplarOptions, default_lr
    from dae.pipeline.fit import FitPlan

    o = {**FIT_DEFAULTS, **options}
    specs = [HeadSpec(seed=s, loss=o["loss"], reparam=o["reparam"], alpha=o["alpha"], beta=o["beta"])
             for s in seed_list(o["n_seeds"], o["seed"])]
    config = TrainConfig(epochs=o["epochs"], lr=o["lr"] or default_lr(o["head"]) or _TRAIN.lr,
                         weight_decay=o["weight_decay"], batch_size=o["batch_size"], selection=o["selection"],
                         prediction=o["prediction"])
    head_options = (ExemplarOptions(voters=o["voters"], with_dd=o["with_dd"]) if o["head"] in EXEMPLAR_HEADS else
                    sequence_options_of(o) if o["head"] in SEQUENCE_HEADS else
                    HeadOptions(bins=o["bins"], bin_std=o["bin_std"], bin_rule=o["bin_predict"],
                                judge_rule=o["judge_rule"]))
    return FitPlan(head=o["head"], specs=specs, config=config, dataset=o["dataset"] or "",
                   score_range=card_score_range(o["dataset"], o["manifest"]), head_options=head_options,
                   calibrate=o["calibrate"], calibration_folds=o["calibration_folds"])


def fit_from_options(options: dict, echo=print):
    """`dae fit`: train what `options` (FIT_DEFAULTS' keys, plus out and leaderboard) describe. Returns run_fit's."""
    from dae.pipeline.fit import run_fit

    options = {**FIT_DEFAULTS, **options}
    _require_inputs(options)
    return run_fit(options["features"], options["manifest"], fit_plan(options), out=options.get("out"),
                   leaderboard=options.get("leaderboard"), echo=echo, options=_recordable(options))


def study_config(options: dict) -> TrainConfig:
    """The TrainConfig of a study (studies' own batch size and lr when not given; device resolved)."""
    from dae.devices import resolve_device

    o = {**STUDY_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    return TrainConfig(epochs=o["epochs"], lr=o["lr"], weight_decay=o["weight_decay"], batch_size=o["batch_size"],
                       selection=o["selection"], device=str(resolve_device(o["device"])))


def study_from_options(study: str, options: dict, echo=print):
    """`dae ablate STUDY`: run the study that `options` (STUDY_DEFAULTS' keys, plus out, leaderboard, plots) describe."""
    from dae.pipeline.studies import run_study_files

    options = {**STUDY_DEFAULTS, **options}
    _require_inputs(options)
    o = options
    return run_study_files(study, o["features"], o["manifest"], seed_list(o["n_seeds"], o["seed"], STUDY_SEEDS),
                           study_config(o), dataset=o["dataset"] or "",
                           score_range=card_score_range(o["dataset"], o["manifest"]),
                           losses=csv_list(o["losses"]), distributions=csv_list(o["distributions"]),
                           reparams=csv_list(o["reparams"]), out=o.get("out"), leaderboard=o.get("leaderboard"),
                           plots=o.get("plots"), n_jobs=o["jobs"], backend=o["backend"], scheduler=o["scheduler"],
                           threads=o["threads"], echo=echo, head=o["head"], calibrate=o["calibrate"],
                           calibration_folds=o["calibration_folds"],
                           options={"study": study, **_recordable(o)})


def pooling_from_options(options: dict, echo=print):
    """`dae ablate pooling`: pooled heads at fit's settings, sequence heads at their own budget, on the same cells."""
    from dae.heads.sequence_options import SEQUENCE_EPOCHS, SEQUENCE_LR
    from dae.pipeline.pooling import run_pooling_files

    o = {**POOLING_DEFAULTS, **options}
    _require_inputs(o)
    config = TrainConfig(epochs=o["epochs"], batch_size=o["batch_size"])
    sequence_config = TrainConfig(epochs=o["sequence_epochs"] or SEQUENCE_EPOCHS, lr=o["sequence_lr"] or SEQUENCE_LR,
                                  batch_size=o["batch_size"])
    return run_pooling_files(o["features"], o["manifest"], list(range(o["n_seeds"])), config, sequence_config,
                             sequence_options_of(o), heads=csv_list(o["heads"]), dataset=o["dataset"] or "",
                             score_range=card_score_range(o["dataset"], o["manifest"]), out=o.get("out"),
                             leaderboard=o.get("leaderboard"), curves=o["curves"], echo=echo,
                             command_options={"study": "pooling", **_recordable(o)}, calibrate=o["calibrate"],
                             calibration_folds=o["calibration_folds"])


def voters_from_options(options: dict, echo=print):
    """`dae ablate voters`: each exemplar rule trains its seeds once; the same models vote with every count."""
    from dae.heads.trainer import HeadSpec
    from dae.pipeline.fit import FitPlan
    from dae.pipeline.voters_study import run_voters_study_files

    o = options
    _require_inputs(o)
    try:
        counts = [int(v) for v in csv_list(o["voter_counts"]) or []]
    except ValueError:
        raise UsageError(f"--voters takes comma-separated integers, got {o['voter_counts']!r}") from None
    specs = [HeadSpec(seed=s) for s in seed_list(o["n_seeds"], o["seed"], STUDY_SEEDS)]
    config = TrainConfig(epochs=o["epochs"], lr=o["lr"], batch_size=o["batch_size"], selection=o["selection"])
    plan = FitPlan(head=o["head"], specs=specs, config=config, dataset=o["dataset"] or "",
                   score_range=card_score_range(o["dataset"], o["manifest"]))
    return run_voters_study_files(o["features"], o["manifest"], plan, counts, csv_list(o["rules"]), out=o.get("out"),
                                  leaderboard=o.get("leaderboard"), echo=echo)


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
