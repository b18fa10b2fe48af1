"""`dae ablate pooling`: the DAE on the mean of the clips against attn-dae, gdlt and gdlt-dae on the same sequences,
seeds and protocol cells; one leaderboard row per model naming its pooling, per-epoch curves, wall time per head.

`--recipe NAME[,NAME]` trains the heads that take a recipe (`gdlt`/`gdlt-dae` a gdlt recipe, `cofinal`/`cofinal-dae`
a cofinal one) at it, exactly as `dae fit --recipe NAME --head HEAD` would (`pipeline.settings.apply_recipe`: its
optimizer, schedule, epochs, batch, target scaling, crop, widths, dropout ...); the study's explicit
--sequence-epochs, --sequence-lr, --batch-size and sequence options override it, as fit's explicit options do. The
other heads keep the study's settings; every row names its recipe (empty for none)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from dae.atomic import write_study_folder
from dae.errors import UsageError
from dae.heads.calibration_options import DEFAULT_FOLDS
from dae.heads.config import TrainConfig
from dae.heads.registry import POOLING, SEQUENCE_INPUT_HEADS as SEQUENCE_HEADS
from dae.heads.sequence.options import SequenceOptions
from dae.heads.trainer import HeadSpec
from dae.pipeline.fit import FitPlan, fit_models
from dae.pipeline.leaderboard import summarise
from dae.pipeline.machine import software_and_machine
from dae.pipeline.settings import POOLING_DEFAULTS, SEQUENCE_DEFAULTS, STUDY_CALIBRATOR
from dae.pipeline.studies.ablate import compare_configs, curves_table

DEFAULT_HEADS = tuple(POOLING_DEFAULTS["heads"].split(","))  # `dae ablate pooling --heads` default
# the study's options that override a recipe when given explicitly -> dae fit's names for them
RECIPE_OVERRIDES = {"sequence_epochs": "epochs", "sequence_lr": "lr", "batch_size": "batch_size",
                    **{name: name for name in SEQUENCE_DEFAULTS}}


@dataclasses.dataclass(frozen=True)
class RecipeCell:
    """How one head of the study trains at a named recipe: fit's TrainConfig, sequence options and target scaling."""

    recipe: str
    config: TrainConfig
    options: SequenceOptions
    target_scale: str


def recipe_cells(names, heads, options: dict, explicit=()) -> dict[str, RecipeCell]:
    """head -> RecipeCell for every head of `heads` that trains one of the recipes `names`, each resolved as `dae fit
    --recipe NAME --head HEAD` resolves it from the study's `options` (POOLING_DEFAULTS' keys; those in `explicit`
    override the recipe, RECIPE_OVERRIDES). Usage errors, before anything is read or written: an unknown recipe, one
    that cannot run, one that no head of `heads` trains, two recipes for one head, a recipe for another dataset than
    --dataset or another target than the manifest's."""
    from dae.heads.recipes import get_recipe
    from dae.heads.registry import trains_recipes_of
    from dae.pipeline.settings import FIT_DEFAULTS, apply_recipe, sequence_options_of, train_config

    cells = {}
    for name in names or ():
        recipe = get_recipe(name)
        recipe.check_runnable()
        takers = [h for h in heads if trains_recipes_of(h, recipe.head)]
        if not takers:
            raise UsageError(f"recipe {name} trains head {recipe.head} (or its DAE plug-in), which is not among "
                             f"--heads {','.join(heads)}")
        for head in takers:
            if head in cells:
                raise UsageError(f"two recipes for head {head}: {cells[head].recipe} and {name}")
            overrides = {fit_name: options[ours] for ours, fit_name in RECIPE_OVERRIDES.items()
                         if ours in explicit and options.get(ours) is not None}
            fit = {**FIT_DEFAULTS, "head": head, "recipe": name, "dataset": options.get("dataset"),
                   "manifest": options.get("manifest"), **overrides}
            merged = apply_recipe(fit, set(overrides))
            config = train_config(merged, head)
            config.check()
            cells[head] = RecipeCell(name, config, sequence_options_of(merged), merged["target_scale"])
    return cells


def recipe_dataset(names) -> str | None:
    """The dataset card the recipes `names` are for (None without recipes); recipes of two datasets: a usage error."""
    from dae.heads.recipes import get_recipe

    datasets = sorted({get_recipe(n).dataset for n in names or ()})
    if len(datasets) > 1:
        raise UsageError(f"--recipe: recipes for datasets {', '.join(datasets)}; one study reads one dataset")
    return datasets[0] if datasets else None


@dataclasses.dataclass
class PoolingResult:
    """The study's tables: rows (one per model), comparison (one per head), curves (model x epoch)."""

    rows: pd.DataFrame
    comparison: pd.DataFrame
    curves: pd.DataFrame
    wall_seconds: dict
    report: str = ""


def run_pooling(fs, manifest: pd.DataFrame, heads, seeds, config: TrainConfig, sequence_config: TrainConfig,
                options: SequenceOptions, dataset: str, score_range=None, manifest_name: str = "manifest",
                curves: bool = True, echo=print, calibrate: str = STUDY_CALIBRATOR,
                calibration_folds: int = DEFAULT_FOLDS, recipes: dict | None = None) -> PoolingResult:
    """Train every head of `heads` (seeds x protocol cells) on fs / manifest; pooled heads with `config`, sequence
    heads with `sequence_config` and `options`, a head of `recipes` (head -> RecipeCell, `recipe_cells`) at its
    recipe, every head's intervals calibrated by `calibrate` (CV+'s fold models cost `calibration_folds` more models
    per model). Returns the rows, the comparison against the best, the curves."""
    unknown = [h for h in heads if h not in POOLING]
    if unknown:
        raise UsageError(f"unknown head {unknown[0]!r} for the pooling study (choose from {', '.join(POOLING)})")
    if any(h in SEQUENCE_HEADS for h in heads) and fs.sequences is None:
        raise UsageError(f"{fs.path}: the pooling study needs clip sequences (a schema-2 feature file)")
    frames, results, walls = [], [], {}
    for head in heads:
        cell = (recipes or {}).get(head)
        cfg = cell.config if cell else sequence_config if head in SEQUENCE_HEADS else config
        cfg = dataclasses.replace(cfg, track_curves=curves and head != "ridge")
        head_options = cell.options if cell else options if head in SEQUENCE_HEADS else None
        plan = FitPlan(head=head, specs=[HeadSpec(seed=int(s)) for s in seeds], config=cfg, dataset=dataset,
                       score_range=score_range, head_options=head_options, calibrate=calibrate,
                       calibration_folds=calibration_folds, target_scale=cell.target_scale if cell else "range",
                       recipe=cell.recipe if cell else "")
        start = time.perf_counter()
        rows, _, res = fit_models(fs, manifest, plan, manifest_name, note=echo)
        walls[head] = time.perf_counter() - start
        rows["pooling"] = POOLING[head]
        rows["wall_seconds"] = walls[head]
        frames.append(rows)
        results += [(head, r) for r in res]
        echo(f"  {head}: {len(rows)} models in {walls[head]:.1f} s")
    rows = pd.concat(frames, ignore_index=True)
    table = curves_frame(results)
    comparison = compare_configs(rows)
    if "head" not in comparison:  # one head: no setting varies, so the comparison names none (a KeyError before)
        comparison = comparison.assign(head=rows["head"].iloc[0])
    return PoolingResult(rows, comparison, table, walls)


def curves_frame(results) -> pd.DataFrame:
    frames = []
    for head, res in results:
        part = curves_table([res])
        if len(part):
            frames.append(part.assign(head=head))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def format_pooling(result: PoolingResult, baseline: str = "dae") -> str:
    """The printed report: Spearman per head (Fisher z over folds and groups, mean ± std over seeds), its
    difference to the best and to the mean-pooled DAE, and each head's wall time against the pooled DAE's."""
    comp = result.comparison.set_index("head") if "head" in result.comparison else result.comparison
    base_wall = result.wall_seconds.get(baseline)
    base_rho = comp.loc[baseline, "spearman_mean"] if baseline in comp.index else np.nan
    lines = []
    for head, wall in result.wall_seconds.items():
        r = comp.loc[head]
        beats = "" if head == baseline or not np.isfinite(base_rho) else \
            ("above the mean-pooled dae" if r["spearman_mean"] > base_rho else "not above the mean-pooled dae")
        lines.append({"head": head, "pooling": POOLING[head], "seeds": int(r["seeds"]),
                      "spearman": f"{r['spearman_mean']:.4f}" + (f" ± {r['spearman_std']:.4f}"
                                                                  if np.isfinite(r["spearman_std"]) else ""),
                      "Δ vs dae": "-" if head == baseline or not np.isfinite(base_rho)
                      else f"{r['spearman_mean'] - base_rho:+.4f}",
                      "beyond seed spread (vs best)": "best" if r["best"] else
                      ("-" if r["seeds"] < 2 else "yes" if r["exceeds_spread"] else "no"),
                      "wall s": f"{wall:.1f}",
                      "× dae": f"{wall / base_wall:.1f}" if base_wall else "-", "": beats})
    rows = result.rows
    facts = "; ".join(f"{c} {', '.join(sorted(rows[c].astype(str).unique()))}" for c in ("selection", "backbone")
                      if c in rows)
    text = [pd.DataFrame(lines).to_string(index=False),
            f"spearman: test folds, Fisher z over folds/groups, mean ± std over seeds ({facts}); wall s: the whole "
            "fit of that head (all seeds and cells), × dae: its ratio to the mean-pooled dae's"]
    if len(result.curves) and "test_spearman" in result.curves:
        curves = result.curves
        picks = [e for e in (1, 5, 10, 25, 50, 100) if e <= curves["epoch"].max()]
        mean = curves.groupby(["head", "epoch"], sort=False)["test_spearman"].mean()
        wide = pd.DataFrame({f"epoch {e}": mean.xs(e, level="epoch") for e in picks
                             if e in mean.index.get_level_values("epoch")})
        wide["last epoch"] = mean.groupby(level="head", sort=False).last()
        text += ["", "test Spearman by epoch (mean over models; '-': the head trained fewer epochs):",
                 wide.round(3).to_string(na_rep="-")]
    return "\n".join(text)


def run_pooling_files(features, manifest, seeds, config: TrainConfig, sequence_config: TrainConfig,
                      options: SequenceOptions, heads=DEFAULT_HEADS, dataset: str = "", score_range=None, out=None,
                      leaderboard=None, curves: bool = True, echo=print, command_options: dict | None = None,
                      calibrate: str = STUDY_CALIBRATOR,
                      calibration_folds: int = DEFAULT_FOLDS, recipes: dict | None = None) -> PoolingResult:
    """Read the files, run the pooling study, print its report, write the study folder and leaderboard rows.

    command_options: the command's options, recorded in config.json for `dae ablate pooling --config`
    (pipeline.settings)."""
    from dae.pipeline.runner import close_run, input_record, open_run

    start = open_run(features, manifest, dataset, "ablate-pooling", out, leaderboard, None, echo, sequences=True)
    fs, df, dataset, out = start.fs, start.manifest, start.dataset, start.out
    echo(f"pooling study: {', '.join(heads)}; {len(seeds)} seeds; pooled heads {config.epochs} epochs (batch "
         f"{config.batch_size}, lr {config.lr:g}), sequence heads {sequence_config.epochs} epochs (batch "
         f"{sequence_config.batch_size}, lr {sequence_config.lr:g}, crop {options.crop}) ...")
    for head, cell in (recipes or {}).items():
        echo(f"  {head} at recipe {cell.recipe}: {cell.config.epochs} epochs, {cell.config.optimizer} lr "
             f"{cell.config.lr:g}, {cell.config.schedule} schedule, batch {cell.config.batch_size}, crop "
             f"{cell.options.crop}, targets {cell.target_scale}")
    result = run_pooling(fs, df, heads, seeds, config, sequence_config, options, dataset, score_range,
                         start.manifest_name, curves=curves, echo=echo, calibrate=calibrate,
                         calibration_folds=calibration_folds, recipes=recipes)
    result.rows["run_dir"] = str(out)
    result.report = format_pooling(result)
    echo(result.report)
    meta = {"study": "pooling", "dataset": dataset, **input_record(features, manifest, fs), "heads": list(heads), "seeds": list(map(int, seeds)),
            "train": dataclasses.asdict(config), "sequence_train": dataclasses.asdict(sequence_config),
            "sequence_options": dataclasses.asdict(options), "wall_seconds": result.wall_seconds,
            "recipes": {h: {"recipe": c.recipe, "train": dataclasses.asdict(c.config),
                            "sequence_options": dataclasses.asdict(c.options), "target_scale": c.target_scale}
                        for h, c in (recipes or {}).items()},
            **software_and_machine(), **({"options": command_options} if command_options is not None else {})}
    write_study_folder(out, meta, {"metrics": result.rows, "summary": summarise(result.rows),
                                   "comparison": result.comparison, "curves": result.curves}, result.report)
    close_run(result.rows, leaderboard, echo, f"study written to {out}")
    return result
