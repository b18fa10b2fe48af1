"""`dae predict`: score new videos with a trained run, extracting them exactly as the run's training features were.

The run folder (from `dae fit`) names its feature file; that file's attributes give the clip protocol, the I3D
weights (by sha256) and the decoder, so new videos go through the same stage one. Then every trained model of
the chosen group (all seeds and folds) scores them, and the models are averaged: mu and the scale are the
means over models, and the 90% interval is the mean of the models' interval ends (quantile averaging, exact
for one model). Scores are in the units of the run's score range.
"""
from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dae.atomic import atomic_path
from dae.errors import DaeError, UsageError
from dae.heads.dae import DAEHead
from dae.heads.distributions import StudentT, get_distribution, sample_scale
from dae.heads.metrics import interval

SUPPORTED_HEADS = ("dae", "mlp", "ridge", "core", "dae-core")
LEVEL = 0.9


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
    for candidate in (recorded, Path(run_dir).parent / recorded, Path(run_dir).parent / recorded.name):
        if str(recorded) and candidate.is_file():
            return candidate
    raise DaeError(f"cannot find the run's feature file {recorded} (it holds the clip protocol and weights to "
                   "extract with); pass --features PATH")


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


@torch.no_grad()
def score_features(blob: dict, models: list[dict], features: np.ndarray, difficulty=None, config: dict | None = None) -> dict:
    """mu, scale and 90% interval ends (N,) in score units, averaged over `models`; NaN where a head has none.

    core / dae-core vote with the training videos kept in the run (difficulty: the new videos' DD, for runs that
    compare same-difficulty exemplars; config: the run's config.json, for the voter count)."""
    lo, hi = (float(v) for v in blob["score_range"])
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.shape[1] != int(blob["feature_dim"]):
        raise DaeError(f"the features are {x.shape[1]}-d but the run was trained on {blob['feature_dim']}-d")
    per_model = []
    for model in models:
        xs = (x - model["input_mean"]) / model["input_std"]
        state = model["state_dict"]
        if blob["head"] in ("core", "dae-core"):
            from dae.heads.core import DEFAULT_VOTERS, score_new_videos

            voters = ((config or {}).get("head_options") or {}).get("voters", DEFAULT_VOTERS)
            mu, scale = score_new_videos(blob["head"], model, x.numpy(), difficulty, blob["score_range"],
                                         blob["train"], voters)
            if scale is None:
                nan = np.full(len(mu), np.nan)
                per_model.append((mu, nan, nan, nan))
            else:
                per_model.append((mu, scale, *interval(mu, scale, LEVEL)))
            continue
        if blob["head"] == "ridge":
            mu = (xs.double() @ state["weight"].double().reshape(-1) + state["bias"].double()).numpy()
            per_model.append((mu, np.full(len(mu), np.nan), np.full(len(mu), np.nan), np.full(len(mu), np.nan)))
            continue
        hidden = [int(state[f"layers.{i}.weight"].shape[0]) for i in range(len(state) // 2 - 1)]
        head = DAEHead(x.shape[1], hidden)
        head.load_state_dict(state)
        mu, log_var = head(xs)
        mu = mu.double().numpy()
        if blob["head"] == "mlp":
            per_model.append((mu, np.full(len(mu), np.nan), np.full(len(mu), np.nan), np.full(len(mu), np.nan)))
            continue
        spec = model["spec"]
        scale = sample_scale(torch.exp(0.5 * log_var.double()), spec.get("reparam", "sigma")).numpy()
        distribution = get_distribution(spec.get("distribution", "gaussian"))
        fitted_nu = model.get("distribution_params", {}).get("nu")
        if getattr(distribution, "learned_shape", False):  # the fitted nu (older runs lack it)
            distribution = StudentT(float(fitted_nu)) if fitted_nu is not None else None
        ends = interval(mu, scale, LEVEL, distribution) if distribution else (np.full(len(mu), np.nan),) * 2
        per_model.append((mu, scale, *ends))
    mu, scale, lo90, hi90 = (np.mean([m[k] for m in per_model], axis=0) for k in range(4))
    width = hi - lo
    return {"mu": lo + mu * width, "sigma": scale * width, "lo90": lo + lo90 * width, "hi90": lo + hi90 * width}


def predict_videos(run_dir, videos, *, out=None, features=None, weights=None, group=None, device="auto",
                   workers=None, batch_clips=None, decoder=None, difficulty=None, precision=None, echo=print,
                   note=print) -> pd.DataFrame:
    """Extract `videos` like the run's training features, score them, print and write a CSV. Returns its rows."""
    from dae.features.clips import protocol_from_json
    from dae.features.extract import run_extraction
    from dae.features.i3d import load_i3d
    from dae.features.tasks import tasks_for_files
    from dae.features.store import read_features

    config, blob = load_run(run_dir)
    models = select_models(blob, group)
    attrs = config.get("feature_attrs") or {}
    source = f"{run_dir}/config.json"
    if features is not None or not attrs.get("protocol"):  # --features given, or a run from before feature_attrs
        feature_file = find_feature_file(run_dir, config, features)
        attrs, source = read_features(feature_file).attrs, str(feature_file)
    if not attrs.get("protocol") or not attrs.get("weights_sha256"):
        raise DaeError(f"{source} does not record a clip protocol and weights (the features were not made by "
                       "`dae extract`); dae predict cannot extract new videos the same way")
    protocol = protocol_from_json(attrs["protocol"])
    model = load_i3d(weights=weights)
    if model.weights_sha256 != attrs["weights_sha256"]:
        raise DaeError(f"the run's features were extracted with other I3D weights ({attrs.get('backbone')}, sha256 "
                       f"{attrs['weights_sha256'][:12]}...) than {'--weights' if weights else 'the default ones'} "
                       f"(sha256 {model.weights_sha256[:12]}...); pass --weights with that checkpoint")
    decoder = decoder or attrs.get("decoder") or "decord"
    precision = _extraction_precision(attrs, precision, note)
    tasks = tasks_for_files(videos)
    with tempfile.TemporaryDirectory(prefix="dae-predict-") as tmp:
        result = run_extraction(tasks, Path(tmp) / "features.h5", protocol, device=device, precision=precision,
                                batch_clips=batch_clips,
                                workers=workers, model=model, decoder=decoder, progress=False, note=note,
                                fail_log=Path(tmp) / "failures.csv")
        extracted = read_features(result.out) if result.video_ids else None
    rows = pd.DataFrame({"video": [t.video_id for t in tasks]})
    for column in ("mu", "sigma", "lo90", "hi90"):
        rows[column] = np.nan
    if extracted is not None:
        scored = score_features(blob, models, extracted.features, difficulty, config)
        where = rows["video"].isin(extracted.video_ids).to_numpy()
        order = {v: i for i, v in enumerate(extracted.video_ids)}
        index = [order[v] for v in rows["video"][where]]
        for column, values in scored.items():
            rows.loc[where, column] = values[index]
    errors = {vid: error for vid, _, error in result.failures}
    rows["models"] = len(models)
    rows["error"] = [errors.get(v, "") for v in rows["video"]]
    out = Path(out) if out else Path(f"predictions-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.csv")
    with atomic_path(out) as tmp:
        rows.to_csv(tmp, index=False)
    lo, hi = blob["score_range"]
    echo(f"run {run_dir} ({blob['head']}, {len(models)} models averaged; scores in {lo:g}..{hi:g})")
    echo(format_predictions(rows))
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
    lines = [f"{'video':<40} {'mu':>9} {'sigma':>9} {'90% interval':>21}"]
    for _, r in rows.iterrows():
        name = r["video"] if len(r["video"]) <= 40 else "..." + r["video"][-37:]
        if r["error"]:
            lines.append(f"{name:<40} failed: {r['error']}")
            continue
        spread = f"{r['sigma']:9.3f}" if np.isfinite(r["sigma"]) else f"{'-':>9}"
        span = f"[{r['lo90']:8.3f}, {r['hi90']:8.3f}]" if np.isfinite(r["lo90"]) else f"{'-':>21}"
        lines.append(f"{name:<40} {r['mu']:9.3f} {spread} {span}")
    return "\n".join(lines)
