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
training features and that distance's percentile among the training videos' own (`dae.pipeline.run_folder`).
Above FAR_PERCENTILE (farther than 99% of the training videos) a warning says the interval may be
over-confident: the heads never saw such a feature. Reading the run folder is `dae.pipeline.run_folder`'s, the
mixture's maths `dae.heads.mixtures`'.
"""
from __future__ import annotations

import datetime as _dt
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dae.atomic import atomic_path, check_new_file
from dae.errors import DaeError, UsageError
from dae.features.extract_defaults import DEFAULT_DECODER
from dae.heads.calibration import Calibration
from dae.heads.calibration import intervals as calibration_intervals
from dae.heads.distributions import get_distribution
from dae.heads.mixtures import LEVEL, fitted_distribution, interval_z, mixture
from dae.heads.registry import DEFAULT_VOTERS, EXEMPLAR_HEADS, get_head
from dae.pipeline.run_folder import (distance_percentile, feature_distance, feature_mismatches, find_feature_file,
                                     has_spread, load_run, recorded_file, select_models, sequence_options)

FAR_PERCENTILE = 99.0


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
    path = recorded_file(run_dir, recorded)
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


def _rebuild_context(blob: dict, config: dict | None, difficulty, sequences) -> dict:
    """What the registry's rebuilder (`dae.heads.registry.Head.outputs`) gets beside a model's weights: bank (a
    sequence head's heads.sequence.ClipBank of `sequences`) and options (the run's SequenceOptions), difficulty (the
    videos' DD or None) and voters (exemplar heads: the run's voter count)."""
    head = get_head(blob["head"])
    context = {"bank": None, "options": None, "difficulty": difficulty, "voters": None}
    if head.inputs == "sequence":
        from dae.heads.sequence.models import ClipBank

        if sequences is None:
            raise UsageError(f"a {blob['head']} run scores clip sequences (schema 2) and none were given")
        context.update(bank=ClipBank(*sequences), options=sequence_options(config or {}))
    if head.exemplar:
        context["voters"] = ((config or {}).get("head_options") or {}).get("voters", DEFAULT_VOTERS)
    return context


def _head_outputs(blob: dict, weights: dict, x: torch.Tensor, spec: dict, context: dict):
    """One trained head's (mu, scale) on features x, normalised units; scale None for a point head. `weights` is a
    model of model.pt or one of its CV+ fold models; the registry names the function that rebuilds the run's head."""
    return get_head(blob["head"]).load("outputs")(blob, weights, x, spec, context)


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
    context = _rebuild_context(blob, config, difficulty, sequences)
    outputs = [_head_outputs(blob, model, x, model.get("spec") or {}, context) for model in models]
    out = _mixture_in_score_units(models, outputs, lo, hi)
    if all((m.get("calibration") or {}).get("method", "none") != "none" for m in models):
        ends = [_calibrated_interval(blob, m, own, x, lo, hi, context) for m, own in zip(models, outputs)]
        out["lo90"], out["hi90"] = (np.mean([e[k] for e in ends], axis=0) for k in (0, 1))
        # z with mu +- z sigma_calibrated = the calibrated interval (a learned Student-t: its fitted nu, as `dae
        # fit`'s sigma_calibrated; one recorded without it counts as Gaussian)
        families = [fitted_distribution(m) or get_distribution("gaussian") for m in models]
        out["sigma_calibrated"] = (out["hi90"] - out["lo90"]) / (2.0 * interval_z(families, LEVEL))
    return out


def _mixture_in_score_units(models: list[dict], outputs: list, lo: float, hi: float) -> dict:
    """The models' mixture (`dae.heads.mixtures.mixture`) of their normalised (mu, scale) outputs, in score units
    lo..hi; sigma and the interval NaN where a model has no spread (ridge, mlp, gdlt) or its learned nu was not
    recorded (older runs)."""
    mus = [mu for mu, _ in outputs]
    spread = [(scale, fitted_distribution(m)) for m, (_, scale) in zip(models, outputs) if scale is not None]
    scales, distributions = [s for s, _ in spread], [d for _, d in spread]
    spread_known = bool(scales) and all(d is not None for d in distributions)
    mix = mixture(mus, scales, distributions, LEVEL) if spread_known else mixture(mus)
    width = hi - lo
    nan = np.full(len(mix["mu"]), np.nan)
    out = {"mu": lo + mix["mu"] * width, "sigma": nan, "sigma_calibrated": nan, "lo90": nan, "hi90": nan,
           "mu_spread": mix["mu_spread"] * width}
    if spread_known:
        out["sigma"] = mix["sigma"] * width
        out["lo90"], out["hi90"] = lo + mix["lo"] * width, lo + mix["hi"] * width
    return out


def _calibrated_interval(blob: dict, model: dict, own, x: torch.Tensor, lo: float, hi: float, context: dict):
    """One model's 90% interval (score units) from the calibrator `dae fit` fitted and its fold models; own: the
    model's own normalised (mu, scale) on x, already computed."""
    spec = model["spec"]
    width = hi - lo
    mu, scale = own
    mu, scale = lo + mu * width, (scale * width if scale is not None else None)
    distribution = fitted_distribution(model) or get_distribution(spec.get("distribution", "gaussian"))
    # each fold model with its own spec (its seed is FOLD_MODEL_SEED, not the model's: the exemplar heads draw their
    # voters with it); run folders written before fold specs were saved trained them at the model's spec
    folds = [_head_outputs(blob, f, x, f.get("spec", spec), context) for f in model.get("calibration_models", [])]
    fold_mu = np.stack([lo + m * width for m, _ in folds]) if folds else None
    fold_scale = np.stack([s * width for _, s in folds]) if folds and folds[0][1] is not None else None
    cal = Calibration.from_fitted(model["calibration"])
    return calibration_intervals(cal, mu, scale, distribution, fold_mu, fold_scale, (LEVEL,))[LEVEL]


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

    path = recorded_file(run_dir, Path(str(config.get("manifest", ""))))
    if path is None:
        note(f"note: the run's manifest {config.get('manifest', '')} is not found: cannot tell whether the --id "
             "videos were training videos of the run")
        return [(models, ids, "unknown")]
    known, tested_by = _test_membership(read_manifest(path), str(models[0]["tags"].get("group", "")))
    parts: dict = {}
    for video in ids:
        own = [i for i, m in enumerate(models) if tested_by(video, m)]
        role = "new" if video not in known else ("test" if own else "training")
        chosen = tuple(own) if own else tuple(range(len(models)))
        parts.setdefault((chosen, role), []).append(video)
    _note_roles(parts, len(models), note)
    return [([models[i] for i in chosen], vs, role) for (chosen, role), vs in parts.items()]


def _test_membership(manifest: pd.DataFrame, group: str):
    """(the video ids of the run's manifest (of the models' group), tested_by(video, model)): whether the video was
    a test video of that model (its fold's on a k-fold manifest, the test split's otherwise)."""
    if "group" in manifest and group:
        manifest = manifest[manifest["group"].astype(str) == group]
    known = set(manifest["video_id"].astype(str))
    if "fold" in manifest:
        fold_of = dict(zip(manifest["video_id"].astype(str), manifest["fold"].astype(str)))
        return known, lambda v, m: fold_of.get(v) == str(m["tags"].get("fold", ""))
    split_of = dict(zip(manifest["video_id"].astype(str), manifest.get("split", pd.Series(dtype=str)).astype(str)))
    return known, lambda v, m: split_of.get(v) == "test"


def _note_roles(parts: dict, n_models: int, note) -> None:
    """The notes on how --id videos are scored ({(model indices, role): videos}): training videos are not held-out
    predictions; a k-fold run's test videos are scored by their fold's models only."""
    training = [v for (_, role), vs in parts.items() if role == "training" for v in vs]
    if training:
        note(f"note: {len(training)} of the --id videos ({', '.join(training[:5])}{', ...' * (len(training) > 5)}) "
             "are training videos of this run: the models saw their scores, so these are not held-out predictions")
    folds = [len(chosen) for (chosen, role) in parts if role == "test" and len(chosen) < n_models]
    if folds:
        note(f"note: each test video of this k-fold run is scored by the {max(folds)} of {n_models} models whose "
             "test fold held it (the fit's own test predictions), not by the folds that trained on it")


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
    decoder = decoder or attrs.get("decoder") or DEFAULT_DECODER
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