"""`dae predict`: score new videos with a trained run, extracting them exactly as the run's training features were.

The run folder (from `dae fit`) names its feature file; that file's attributes give the clip protocol, the I3D
weights (by sha256) and the decoder, so new videos go through the same stage one. Then every trained model of
the chosen group (all seeds and folds) scores them, and the models form an equal-weight mixture: mu is the mean
of the models' mus, sigma the mixture's standard deviation, sqrt(mean of the models' variances + variance of
their mus), so that seeds that disagree widen it, and the 90% interval is the mixture's 5% and 95% quantiles.
Scores are in the units of the run's score range.

Runs of the sequence heads (attn-dae, gdlt, gdlt-dae) score clip sequences (schema 2): those of videos already in
a feature file, named by id (`--id`, no extraction), or of new videos extracted with the run's stride:T protocol.

How far a video is from what the run was trained on: its RMS standardised distance to the mean of the group's
training features (per-dimension mean and std, recorded in model.pt by `dae fit`), and that distance's
percentile among the training videos' own distances. Above FAR_PERCENTILE (farther than 99% of the training
videos) a warning says the interval may be over-confident: the heads never saw such a feature.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dae.atomic import atomic_path, check_new_file
from dae.errors import DaeError, UsageError
from dae.heads.calibration import Calibration
from dae.heads.calibration import intervals as calibration_intervals
from dae.heads.distributions import StudentT, get_distribution
from dae.heads.registry import DEFAULT_VOTERS, EXEMPLAR_HEADS, NAMES, get_head
from dae.heads.sequence.options import SequenceOptions

SUPPORTED_HEADS = NAMES  # every registered head: the registry says how a run folder rebuilds it
LEVEL = 0.9
FAR_PERCENTILE = 99.0
# what makes features comparable with a run's: the clip protocol, the I3D weights and the backbone's name
FEATURE_IDENTITY = ("protocol", "weights_sha256", "backbone")


def load_run(run_dir) -> tuple[dict, dict]:
    """(config.json, model.pt contents) of a run folder written by `dae fit`."""
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / "config.json", run_dir / "model.pt"
    for path in (config_path, model_path):
        if not path.is_file():
            raise DaeError(f"{run_dir} is not a run folder of `dae fit`: {path.name} is missing")
    try:
        config = json.loads(config_path.read_text())
        blob = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DaeError(f"{run_dir}: unreadable run ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if blob.get("head") not in SUPPORTED_HEADS:
        raise DaeError(f"{run_dir}: dae predict scores runs of the {', '.join(SUPPORTED_HEADS)} heads; "
                       f"this run's head is {blob.get('head')!r}")
    return config, blob


def find_feature_file(run_dir, config: dict, features=None) -> Path:
    """The run's training feature file: --features, else config['features'] as written (cwd) or beside the run."""
    if features is not None:
        path = Path(features)
        if not path.is_file():
            raise DaeError(f"--features {path} does not exist")
        return path
    recorded = Path(str(config.get("features", "")))
    path = _recorded_file(run_dir, recorded)
    if path is None:
        raise DaeError(f"cannot find the run's feature file {recorded} (it holds the clip protocol and weights to "
                       "extract with); pass --features PATH")
    return path


def _recorded_file(run_dir, recorded: Path) -> Path | None:
    """A file config.json names: as written (from the working directory), or beside the run folder."""
    for candidate in (recorded, Path(run_dir).parent / recorded, Path(run_dir).parent / recorded.name):
        if str(recorded) and candidate.is_file():
            return candidate
    return None


def compares_difficulty(blob: dict) -> bool:
    """Whether scoring a video with the run needs its difficulty degree: exemplar models that compare exemplars of the
    same difficulty (core/dae-core --with-dd), or heads whose score uses it (dae-mt; musdl/dae-judges under a rule
    with difficulty)."""
    if blob["head"] in EXEMPLAR_HEADS:
        return any(m["state_dict"].get("exemplar.rule") == "same-difficulty" for m in blob["models"])
    return any(bool((m["state_dict"].get("objective") or {}).get("uses_difficulty")) for m in blob["models"])


def video_difficulties(run_dir, config: dict, blob: dict, names: list[str], given=(), by_id: bool = False,
                       note=print) -> dict | None:
    """Each video's difficulty degree for a run that compares same-difficulty exemplars ({name: DD}; None for
    other runs): `given` (--difficulty) holds one value for every video or one per video in order; without it,
    videos scored by id take theirs from the run's manifest."""
    given = [float(v) for v in ([given] if np.isscalar(given) else given or ())]
    if not compares_difficulty(blob):
        if given:
            note("note: --difficulty is ignored: this run does not compare exemplars by difficulty")
        return None
    if given:
        if len(given) not in (1, len(names)):
            raise UsageError(f"--difficulty: give one value for every video or one per video in order "
                             f"({len(given)} given for {len(names)} videos)")
        return dict(zip(names, given * len(names) if len(given) == 1 else given))
    if not by_id:
        raise UsageError("this run compares exemplars of the same difficulty degree: give the videos' difficulty "
                         "(--difficulty, one value for all or one per --video in order)")
    from dae.manifest import read_manifest

    recorded = Path(str(config.get("manifest", "")))
    path = _recorded_file(run_dir, recorded)
    if path is None:
        raise UsageError(f"this run compares exemplars of the same difficulty degree and its manifest {recorded} "
                         "is not found to read the videos' difficulty from: give it (--difficulty)")
    manifest = read_manifest(path)
    if "difficulty" not in manifest:
        raise UsageError(f"this run compares exemplars of the same difficulty degree and its manifest {path} has no "
                         "difficulty column: give the videos' difficulty (--difficulty)")
    known = dict(zip(manifest["video_id"].astype(str), manifest["difficulty"].astype(float)))
    missing = [v for v in names if v not in known or not np.isfinite(known[v])]
    if missing:
        raise UsageError(f"{len(missing)} of the --id videos have no difficulty in the run's manifest {path}, "
                         f"first: {', '.join(map(repr, missing[:5]))}; give it (--difficulty)")
    note(f"difficulty of the --id videos from the run's manifest {path}")
    return {v: known[v] for v in names}


def select_models(blob: dict, group: str | None) -> list[dict]:
    models = blob["models"]
    groups = sorted({str(m["tags"].get("group", "")) for m in models})
    if group is None:
        if len(groups) > 1:
            raise UsageError(f"the run has one model per group ({', '.join(groups)}); choose one with --group")
        return models
    chosen = [m for m in models if str(m["tags"].get("group", "")) == str(group)]
    if not chosen:
        raise UsageError(f"the run has no group {group!r} (groups: {', '.join(groups)})")
    return chosen


def _canonical(key: str, value) -> str:
    if key == "protocol":
        try:
            value = json.loads(value) if isinstance(value, str) else dict(value)
        except (ValueError, TypeError):
            return str(value)
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else str(value)


def feature_mismatches(run_attrs: dict, given_attrs: dict) -> list[str]:
    """What differs between how the run's training features and the --features file were made (empty: nothing)."""
    out = []
    for key in FEATURE_IDENTITY:
        if key not in run_attrs:
            continue  # runs from before config.json recorded it: nothing to compare with
        ours, theirs = _canonical(key, run_attrs[key]), _canonical(key, given_attrs.get(key))
        if ours != theirs:
            if key == "protocol":
                name = lambda text: (json.loads(text).get("name") if text.startswith("{") else text) or "none"
                ours, theirs = name(ours), name(theirs)
                if ours == theirs:  # one name, other settings (e.g. imported with and without sequences)
                    ours, theirs = f"{ours}, as recorded there", f"{theirs} with other settings"
            elif key == "weights_sha256":
                ours, theirs = ours[:12] + "...", (theirs[:12] + "...") if theirs else "none"
            out.append(f"{key} {theirs or 'none'} (the run's: {ours})")
    return out


def _sd_per_scale(distribution) -> float:
    """Standard deviation of the standard member of a distribution family (scale 1)."""
    name = getattr(distribution, "name", "gaussian")
    if name == "laplace":
        return math.sqrt(2.0)
    if name == "logistic":
        return math.pi / math.sqrt(3.0)
    if name.startswith("student-t"):
        nu = float(distribution.nu)
        return math.sqrt(nu / (nu - 2.0)) if nu > 2.0 else math.inf
    return 1.0


def _cdf(distribution, z):
    from dae.heads.metrics import cdf

    return cdf(z, 0.0, 1.0, distribution)


def mixture_quantile(p: float, mus, scales, distributions) -> np.ndarray:
    """The p-quantile of the equal-weight mixture of models k (mus[k], scales[k]: (N,) each) for every video."""
    from scipy.optimize import brentq

    mus, scales = np.asarray(mus, float), np.asarray(scales, float)
    own = np.stack([m + d.standard_quantile(p) * s for m, s, d in zip(mus, scales, distributions)])
    out = np.empty(mus.shape[1])
    for i in range(mus.shape[1]):
        lo, hi = own[:, i].min(), own[:, i].max()  # the mixture's quantile lies between its members'
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            out[i] = lo
            continue
        f = lambda y: np.mean([_cdf(d, (y - m[i]) / s[i]) for m, s, d in zip(mus, scales, distributions)]) - p
        out[i] = brentq(f, lo, hi, xtol=1e-12)
    return out


def _head_outputs(blob: dict, weights: dict, x: torch.Tensor, spec: dict, bank=None, options=None, exemplar=None):
    """One trained head's (mu, scale) on features x, normalised units; scale None for a point head. `weights` is a
    model of model.pt or one of its CV+ fold models. The registry names the function that rebuilds the run's head
    (`dae.heads.registry.Head.outputs`); it gets `context`: bank (a sequence head's heads.sequence.ClipBank) and
    options (the run's SequenceOptions), difficulty (the videos' DD or None) and voters (exemplar heads)."""
    difficulty, voters = exemplar if exemplar is not None else (None, None)
    context = {"bank": bank, "options": options, "difficulty": difficulty, "voters": voters}
    return get_head(blob["head"]).load("outputs")(blob, weights, x, spec, context)


def sequence_options(config: dict) -> SequenceOptions:
    """The sequence-head options a run was fitted with (config.json `head_options`)."""
    recorded = config.get("head_options") or {}
    try:
        return SequenceOptions(**recorded)
    except TypeError as exc:
        raise DaeError(f"unreadable sequence head options in the run's config.json ({exc})") from None


@torch.no_grad()
def score_features(blob: dict, models: list[dict], features: np.ndarray, difficulty=None,
                   config: dict | None = None, sequences=None) -> dict:
    """mu, sigma, 90% interval ends and the spread of mu over models, (N,) each in score units, of the models'
    equal-weight mixture (module docstring); sigma and the interval NaN for heads without a spread. A run fitted
    with --calibrate scale|conformal (model.pt `calibration`, with its fold models) gives its calibrated 90%
    interval instead, averaged over models (quantile averaging, as predictions.csv's per model).

    core / dae-core vote with the training videos kept in the run (difficulty: the new videos' DD, for runs that
    compare same-difficulty exemplars; config: the run's config.json, for the voter count). Sequence heads read
    `sequences`: (clips (sum of T, D), starts (N,), lengths (N,)) of the same N videos as `features`."""
    lo, hi = (float(v) for v in blob["score_range"])
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.shape[1] != int(blob["feature_dim"]):
        raise DaeError(f"the features are {x.shape[1]}-d but the run was trained on {blob['feature_dim']}-d")
    bank = options = exemplar = None
    if get_head(blob["head"]).inputs == "sequence":
        from dae.heads.sequence.models import ClipBank

        if sequences is None:
            raise UsageError(f"a {blob['head']} run scores clip sequences (schema 2) and none were given")
        bank, options = ClipBank(*sequences), sequence_options(config or {})
    exemplar = (difficulty, ((config or {}).get("head_options") or {}).get("voters", DEFAULT_VOTERS)
                if blob["head"] in EXEMPLAR_HEADS else None)
    mus, scales, distributions, outputs = [], [], [], []
    for model in models:
        spec = model.get("spec") or {}
        mu, scale = _head_outputs(blob, model, x, spec, bank, options, exemplar)
        outputs.append((mu, scale))
        mus.append(mu)
        if scale is None:  # ridge, mlp, gdlt: no spread of their own
            continue
        scales.append(scale)
        distribution = get_distribution(spec.get("distribution", "gaussian"))
        fitted_nu = model.get("distribution_params", {}).get("nu")
        if getattr(distribution, "learned_shape", False):  # the fitted nu (older runs lack it)
            distribution = StudentT(float(fitted_nu)) if fitted_nu is not None else None
        distributions.append(distribution)
    mus = np.stack(mus)
    width = hi - lo
    mu, spread = mus.mean(0), mus.std(0)  # ddof 0: the mixture's variance of its members' means
    nan = np.full(len(mu), np.nan)
    out = {"mu": lo + mu * width, "sigma": nan, "sigma_calibrated": nan, "lo90": nan, "hi90": nan,
           "mu_spread": spread * width}
    if scales and all(d is not None for d in distributions):
        scales = np.stack(scales)
        variances = np.stack([(s * _sd_per_scale(d)) ** 2 for s, d in zip(scales, distributions)])
        out["sigma"] = np.sqrt(variances.mean(0) + spread ** 2) * width
        tail = (1.0 - LEVEL) / 2.0
        out["lo90"] = lo + mixture_quantile(tail, mus, scales, distributions) * width
        out["hi90"] = lo + mixture_quantile(1.0 - tail, mus, scales, distributions) * width
    if all((m.get("calibration") or {}).get("method", "none") != "none" for m in models):
        ends = [_calibrated_interval(blob, m, own, x, lo, hi, bank, options, exemplar)
                for m, own in zip(models, outputs)]
        out["lo90"], out["hi90"] = (np.mean([e[k] for e in ends], axis=0) for k in (0, 1))
        out["sigma_calibrated"] = (out["hi90"] - out["lo90"]) / (2.0 * _interval_z(models))
    return out


def _interval_z(models: list[dict]) -> float:
    """z with mu +- z sigma_calibrated = the calibrated 90% interval: the models' distribution family's 95% standard
    quantile (a learned Student-t: its fitted nu, as `dae fit`'s sigma_calibrated), the Gaussian's when they
    differ."""
    families = set()
    for model in models:
        spec = model.get("spec") or {}
        distribution = get_distribution(spec.get("distribution", "gaussian"))
        nu = model.get("distribution_params", {}).get("nu")
        if getattr(distribution, "learned_shape", False):
            distribution = StudentT(float(nu)) if nu is not None else get_distribution("gaussian")
        families.add((getattr(distribution, "name", "gaussian"), float(getattr(distribution, "nu", 0) or 0)))
        z = float(distribution.standard_quantile(0.5 + LEVEL / 2.0))
    return z if len(families) == 1 else float(get_distribution("gaussian").standard_quantile(0.5 + LEVEL / 2.0))


def _calibrated_interval(blob: dict, model: dict, own, x: torch.Tensor, lo: float, hi: float, bank=None,
                         options=None, exemplar=None):
    """One model's 90% interval (score units) from the calibrator `dae fit` fitted and its fold models; own: the
    model's own normalised (mu, scale) on x, already computed."""
    spec = model["spec"]
    width = hi - lo
    mu, scale = own
    mu, scale = lo + mu * width, (scale * width if scale is not None else None)
    distribution = get_distribution(spec.get("distribution", "gaussian"))
    fitted_nu = model.get("distribution_params", {}).get("nu")
    if getattr(distribution, "learned_shape", False) and fitted_nu is not None:
        distribution = StudentT(float(fitted_nu))
    folds = [_head_outputs(blob, f, x, spec, bank, options, exemplar) for f in model.get("calibration_models", [])]
    fold_mu = np.stack([lo + m * width for m, _ in folds]) if folds else None
    fold_scale = np.stack([s * width for _, s in folds]) if folds and folds[0][1] is not None else None
    cal = Calibration.from_fitted(model["calibration"])
    return calibration_intervals(cal, mu, scale, distribution, fold_mu, fold_scale, (LEVEL,))[LEVEL]


def feature_reference(features: np.ndarray, rows: np.ndarray) -> dict:
    """What `dae predict` needs to say how far a new feature is from the training features `features[rows]`:
    their per-dimension mean and std and each training video's own distance (sorted)."""
    train = np.asarray(features, np.float64)[np.asarray(rows)]
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
    ref = {"mean": torch.as_tensor(mean), "std": torch.as_tensor(std)}
    ref["distances"] = torch.as_tensor(np.sort(feature_distance(ref, train)))
    return ref


def feature_distance(reference: dict, features: np.ndarray) -> np.ndarray:
    """RMS standardised distance of each feature to the reference's mean."""
    z = (np.asarray(features, np.float64) - reference["mean"].numpy()) / reference["std"].numpy()
    return np.sqrt(np.mean(z * z, axis=1))


def distance_percentile(reference: dict, distances: np.ndarray) -> np.ndarray:
    """Percent of the training videos at most as far from their mean as each distance; NaN (undefined) when the
    training features have no spread (`has_spread`)."""
    own = reference["distances"].numpy()
    if not has_spread(reference):
        return np.full(len(np.atleast_1d(distances)), np.nan)
    return 100.0 * np.searchsorted(own, distances, side="right") / len(own)


def has_spread(reference: dict) -> bool:
    """Whether the training features vary at all: identical ones (every training distance 0) leave nothing to
    measure a distance against, and the OOD check is unavailable rather than "farther than all of them"."""
    own = reference["distances"].numpy()
    return bool(len(own)) and float(own.max()) > 0.0


def group_references(features: np.ndarray, results) -> dict:
    """One feature_reference per group, over the union of its models' training rows."""
    rows: dict[str, set] = {}
    for res in results:
        rows.setdefault(str(res.job.tags.get("group", "")), set()).update(int(i) for i in res.job.train_rows)
    return {group: feature_reference(features, np.array(sorted(r))) for group, r in rows.items()}


def predict_videos(run_dir, videos=(), *, ids=(), out=None, features=None, weights=None, group=None, device="auto",
                   workers=None, batch_clips=None, decoder=None, difficulty=None, precision=None,
                   allow_feature_mismatch=False, echo=print, note=print, overwrite=False) -> pd.DataFrame:
    """Extract `videos` like the run's training features (or take the videos `ids` from the feature file as they
    are), score them, print and write a CSV (an existing `out` is replaced only with `overwrite`). Returns its rows.

    features: a feature file whose protocol, weights and backbone must be the run's (refused otherwise, unless
    allow_feature_mismatch: then every output line and the CSV's `warning` column say so). difficulty: for runs
    that compare same-difficulty exemplars, one value for every video or one per video (`video_difficulties`)."""
    from dae.features.store import read_features

    videos, ids = [str(v) for v in videos], [str(v) for v in ids]
    if bool(videos) == bool(ids):
        raise UsageError("give the videos to score as files (--video) or as ids in the feature file (--id), not both"
                         if videos else "give the videos to score: --video FILE or --id VIDEO_ID")
    config, blob = load_run(run_dir)
    models = select_models(blob, group)
    out = Path(out) if out else Path(f"predictions-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.csv")
    check_new_file(out, overwrite, "--out")
    sequence_head = get_head(blob["head"]).inputs == "sequence"
    attrs = config.get("feature_attrs") or {}
    recorded = {**({"backbone": config["backbone"]} if config.get("backbone") else {}), **attrs}
    source = f"{run_dir}/config.json"
    warning = ""
    feature_file = None
    if features is not None or ids or not attrs.get("protocol"):  # given, needed, or a run from before feature_attrs
        feature_file = find_feature_file(run_dir, config, features)
        if ids and sequence_head:
            _check_has_sequences(feature_file, blob["head"])
        attrs, source = read_features(feature_file).attrs, str(feature_file)
        differences = feature_mismatches(recorded, attrs)
        if differences and not allow_feature_mismatch:
            raise DaeError(f"--features {feature_file} was not made like the run's training features: "
                           f"{'; '.join(differences)}; use the run's own feature file, or pass "
                           "--allow-feature-mismatch to score anyway (the output then says so)")
        if differences:
            warning = "features differ from the run's: " + "; ".join(differences)
            note(f"warning: {warning} (--allow-feature-mismatch): the scores are not what the run would give")
    difficulty = video_difficulties(run_dir, config, blob, ids or videos, difficulty, bool(ids), note)
    if ids:
        parts = []
        _features_by_id(feature_file, ids, sequence_head, blob["head"])  # every id there, once: usage errors first
        for chosen, part_ids, role in _models_by_id(run_dir, config, models, ids, note):
            extracted = _features_by_id(feature_file, part_ids, sequence_head, blob["head"])
            parts.append(_score_rows(blob, chosen, config, part_ids, extracted, [], difficulty).assign(run_role=role))
        rows = pd.concat(parts, ignore_index=True).set_index("video").loc[ids].reset_index()
    else:
        extracted, failures = _extract_videos(videos, attrs, source, out, weights, device, workers, batch_clips,
                                              decoder, precision, sequence_head, note)
        rows = _score_rows(blob, models, config, videos, extracted, failures, difficulty)
    return _report(rows, run_dir, blob, models, warning, out, echo, config)


def _models_by_id(run_dir, config: dict, models: list[dict], ids: list[str], note) -> list[tuple]:
    """Which of the run's models score each --id video, as [(models, ids, role)]: a test video of the run is scored
    by the models it was a test video of (on a k-fold run: its fold's, not the folds that trained on it), so the
    fit's own test predictions come back; a training video of every model is scored by all of them with a note
    (not a held-out prediction); a video outside the run's manifest is new. role: test, training, new or unknown
    (the run's manifest is not found)."""
    from dae.manifest import read_manifest

    path = _recorded_file(run_dir, Path(str(config.get("manifest", ""))))
    if path is None:
        note(f"note: the run's manifest {config.get('manifest', '')} is not found: cannot tell whether the --id "
             "videos were training videos of the run")
        return [(models, ids, "unknown")]
    manifest = read_manifest(path)
    group = str(models[0]["tags"].get("group", ""))
    if "group" in manifest and group:
        manifest = manifest[manifest["group"].astype(str) == group]
    known = set(manifest["video_id"].astype(str))
    if "fold" in manifest:
        fold_of = dict(zip(manifest["video_id"].astype(str), manifest["fold"].astype(str)))
        tested_by = lambda v, m: fold_of.get(v) == str(m["tags"].get("fold", ""))  # noqa: E731
    else:
        split_of = dict(zip(manifest["video_id"].astype(str), manifest.get("split", pd.Series(dtype=str)).astype(str)))
        tested_by = lambda v, m: split_of.get(v) == "test"  # noqa: E731
    parts: dict = {}
    for video in ids:
        own = [i for i, m in enumerate(models) if tested_by(video, m)]
        role = "new" if video not in known else ("test" if own else "training")
        chosen = tuple(own) if own else tuple(range(len(models)))
        parts.setdefault((chosen, role), []).append(video)
    training = [v for (_, role), vs in parts.items() if role == "training" for v in vs]
    if training:
        note(f"note: {len(training)} of the --id videos ({', '.join(training[:5])}{', ...' * (len(training) > 5)}) "
             "are training videos of this run: the models saw their scores, so these are not held-out predictions")
    folds = [len(chosen) for (chosen, role) in parts if role == "test" and len(chosen) < len(models)]
    if folds:
        note(f"note: each test video of this k-fold run is scored by the {max(folds)} of {len(models)} models whose "
             "test fold held it (the fit's own test predictions), not by the folds that trained on it")
    return [([models[i] for i in chosen], vs, role) for (chosen, role), vs in parts.items()]


def _features_by_id(feature_file, ids: list[str], sequence_head: bool, head: str):

    """The rows of `ids` in the feature file, with their clip sequences for a sequence head's run (usage error when
    the file has none, or lacks an id)."""
    from dae.features.store import FeatureSet, Sequences, align, align_sequences, read_features

    if len(set(ids)) != len(ids):
        raise UsageError(f"--id {next(v for v in ids if ids.count(v) > 1)} is given twice")
    if sequence_head:
        _check_has_sequences(feature_file, head)
    fs = read_features(feature_file, sequences=sequence_head)
    missing = [v for v in ids if v not in set(fs.video_ids)]
    if missing:
        raise UsageError(f"{len(missing)} of the --id videos are not in {feature_file}, first: "
                         f"{', '.join(map(repr, missing[:5]))}")
    sequences = None
    if sequence_head:
        clips, starts, lengths = align_sequences(fs, ids)
        sequences = Sequences.from_arrays([clips[a:a + n] for a, n in zip(starts, lengths)], dtype=clips.dtype)
    return FeatureSet(ids, align(fs, ids), fs.attrs, fs.path, sequences=sequences)


def _check_has_sequences(feature_file, head: str) -> None:
    from dae.features.store import has_sequences

    if not has_sequences(feature_file):
        raise UsageError(f"{feature_file} has no clip sequences (schema 2), and a {head} run scores clip sequences: "
                         "give the schema-2 file it was fitted on (--features)")


def _extract_videos(videos, attrs, source, out, weights, device, workers, batch_clips, decoder, precision,
                    sequence_head, note):
    """Extract video files as the run's features were made: (FeatureSet of those that worked, or None; failures)."""
    from dae.features.clips import protocol_from_json
    from dae.features.extract import run_extraction
    from dae.features.i3d import load_i3d
    from dae.features.store import read_features
    from dae.features.tasks import tasks_for_files

    if not attrs.get("protocol") or not attrs.get("weights_sha256"):
        raise DaeError(f"{source} does not record a clip protocol and weights (the features were not made by "
                       "`dae extract`); dae predict cannot extract new videos the same way"
                       + ("; score videos already in the file with --id" if sequence_head else ""))
    protocol = protocol_from_json(attrs["protocol"])
    if sequence_head and not protocol.variable_length:
        raise UsageError(f"the run's features were extracted with {protocol.name}, which gives no clip sequences; "
                         "score videos already in its schema-2 feature file with --id")
    model = load_i3d(weights=weights)
    if model.weights_sha256 != attrs["weights_sha256"]:
        raise DaeError(f"the run's features were extracted with other I3D weights ({attrs.get('backbone')}, sha256 "
                       f"{attrs['weights_sha256'][:12]}...) than {'--weights' if weights else 'the default ones'} "
                       f"(sha256 {model.weights_sha256[:12]}...); pass --weights with that checkpoint")
    decoder = decoder or attrs.get("decoder") or "decord"
    precision = _extraction_precision(attrs, precision, note)
    tasks = tasks_for_files(videos)
    with tempfile.TemporaryDirectory(prefix="dae-predict-") as tmp:
        try:
            result = run_extraction(tasks, Path(tmp) / "features.h5", protocol, device=device, precision=precision,
                                    batch_clips=batch_clips, workers=workers, model=model, decoder=decoder,
                                    progress=False, note=note, fail_log=Path(tmp) / "failures.csv",
                                    clip_dtype=attrs.get("sequence_dtype") if protocol.variable_length else None)
        except DaeError:
            failed = Path(tmp) / "failures.csv"
            if not failed.is_file():
                raise
            reasons = pd.read_csv(failed, keep_default_na=False)
            rows = pd.DataFrame({"video": reasons["video_id"], "error": reasons["error"]})
            with atomic_path(out) as part:
                rows.to_csv(part, index=False)
            raise DaeError(f"no video could be scored ({len(rows)} failed; reasons in {out}): "
                           + "; ".join(f"{v}: {e}" for v, e in zip(rows["video"], rows["error"]))) from None
        extracted = read_features(result.out, sequences=sequence_head) if result.video_ids else None
    return extracted, result.failures


def _score_rows(blob, models, config, names, extracted, failures, difficulty) -> pd.DataFrame:
    """One row per video in `names`: the mixture's figures for those in `extracted`, the error of the others."""
    rows = pd.DataFrame({"video": list(names)})
    for column in ("mu", "sigma_raw", "sigma_calibrated", "lo90", "hi90", "mu_spread", "distance",
                   "distance_percentile"):
        rows[column] = np.nan

    if extracted is not None:
        sequences = None
        if extracted.sequences is not None:
            seqs = extracted.sequences
            sequences = (seqs.data, seqs.starts, seqs.lengths)
        dd = None if difficulty is None else np.array([difficulty[v] for v in extracted.video_ids])
        scored = score_features(blob, models, extracted.features, dd, config, sequences)
        reference = blob.get("feature_references", {}).get(str(models[0]["tags"].get("group", "")))
        if reference is not None and has_spread(reference):
            scored["distance"] = feature_distance(reference, extracted.features)
            scored["distance_percentile"] = distance_percentile(reference, scored["distance"])
        where = rows["video"].isin(extracted.video_ids).to_numpy()
        order = {v: i for i, v in enumerate(extracted.video_ids)}
        index = [order[v] for v in rows["video"][where]]
        for column, values in scored.items():
            # the CSV names the head's own spread sigma_raw, beside the calibrated one
            rows.loc[where, "sigma_raw" if column == "sigma" else column] = values[index]
    errors = {vid: error for vid, _, error in failures}
    rows["models"] = len(models)
    rows["error"] = [errors.get(v, "") for v in rows["video"]]
    return rows


def score_scale_text(config: dict, blob: dict) -> str:
    """The header's score range (the card's, or the training rows', as config.json records it) and, when the run
    trained on other targets (--target-scale max or divide:C), that scaling: model.pt's score_range is what
    predictions are de-normalised with, which is then not the score range."""
    t_lo, t_hi = (float(v) for v in blob["score_range"])
    lo, hi = (float(v) for v in config.get("score_range", (t_lo, t_hi)))
    text = f"scores in {lo:g}..{hi:g}"
    scale = config.get("target_scale", "range")
    if scale != "range":
        target = f"score / {t_hi:g}" if t_lo == 0 else f"(score - {t_lo:g}) / {t_hi - t_lo:g}"
        text += f"; trained on targets {target} (--target-scale {scale})"
    return text


def _report(rows: pd.DataFrame, run_dir, blob, models, warning: str, out, echo, config=None) -> pd.DataFrame:
    """Write the CSV and print the table with its warnings."""
    far = rows["distance_percentile"] > FAR_PERCENTILE
    if warning:
        rows["warning"] = warning
    with atomic_path(out) as tmp:
        rows.to_csv(tmp, index=False)
    labels = sorted({str((m.get("calibration") or {}).get("label", "none")) for m in models})
    echo(f"run {run_dir} ({blob['head']}, {len(models)} models averaged; {score_scale_text(config or {}, blob)}; "
         f"90% interval calibration: {', '.join(labels)})")
    if warning:
        echo(f"WARNING: {warning}; scored anyway (--allow-feature-mismatch)")
    echo(format_predictions(rows))
    for video in rows.loc[far, "video"]:
        echo(f"warning: {video} is farther from the run's training features than {FAR_PERCENTILE:g}% of its training "
             "videos: the heads never saw such a feature, its interval may be over-confident")
    if "feature_references" not in blob:
        echo("note: this run predates recorded training features: no distance to them (refit to get one)")
    else:
        reference = blob["feature_references"].get(str(models[0]["tags"].get("group", "")))
        if reference is not None and not has_spread(reference):
            echo("note: the out-of-distribution check is unavailable: the run's training features are all identical "
                 "(no spread to measure a distance against)")
    echo(f"written to {out}")
    return rows


def _extraction_precision(attrs: dict, asked: str | None, note) -> str | None:
    """The run's features' precision, or `asked` with a warning when it differs (None: extract's default)."""
    from dae.features.precision import normalise_precision

    made = normalise_precision(attrs.get("precision"))
    if asked is None:
        return made
    if made is not None and asked != made:
        note(f"warning: the run's features were made in {made}, these videos are extracted in {asked}: "
             f"scores can move (bf16 shifts features by ~1e-2); omit --precision to match the run")
    return asked


def format_predictions(rows: pd.DataFrame) -> str:
    """One line per video; `far %` = the video's distance percentile among the training videos' (module docstring);
    `sigma raw` the heads' own spread, `sigma cal` the calibrated one (mu +- 1.645 sigma cal = the 90% interval for a
    Gaussian run)."""
    lines = [f"{'video':<40} {'mu':>9} {'sigma raw':>9} {'sigma cal':>9} {'90% interval':>21} {'far %':>6}"]
    for _, r in rows.iterrows():
        name = r["video"] if len(r["video"]) <= 40 else "..." + r["video"][-37:]
        if r["error"]:
            lines.append(f"{name:<40} failed: {r['error']}")
            continue
        raw, cal = (f"{r[c]:9.3f}" if np.isfinite(r[c]) else f"{'-':>9}" for c in ("sigma_raw", "sigma_calibrated"))
        span = f"[{r['lo90']:8.3f}, {r['hi90']:8.3f}]" if np.isfinite(r["lo90"]) else f"{'-':>21}"
        far = f"{r['distance_percentile']:6.1f}" if np.isfinite(r["distance_percentile"]) else f"{'-':>6}"
        lines.append(f"{name:<40} {r['mu']:9.3f} {raw} {cal} {span} {far}")
    return "\n".join(lines)
