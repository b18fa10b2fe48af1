"""`dae ablate voters`: how many exemplars vote for each test video (1, 3, 5, 10, 20) and which exemplar rule
(`any`, `same-difficulty`), for the exemplar heads (core, dae-core).

The voter count only changes the test-time vote, so each rule trains its seeds once (`dae fit`'s path) and the
same trained models vote with every count (voters drawn from a generator seeded with the model's seed; a count
takes the first V of one shuffled pool, so counts are nested). One leaderboard row per model x count.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dae.atomic import write_study_folder
from dae.errors import UsageError
from dae.heads.distributions import get_distribution
from dae.heads.contrastive.exemplars import RULES
from dae.heads.metrics import evaluate, interval
from dae.heads.registry import EXEMPLAR_HEADS
from dae.heads.contrastive.fitters import ExemplarOptions

VOTERS = (1, 3, 5, 10, 20)


def voter_rows(rows: pd.DataFrame, results, scores, score_range, voters, head: str) -> pd.DataFrame:
    """The fit's rows again for every voter count, with the metrics of that count's vote."""
    lo, hi = score_range
    out = []
    for (_, row), res in zip(rows.iterrows(), results):
        test = res.job.eval_rows["test"]
        p = res.predictions["test"]
        for v in voters:
            mu = lo + p[f"mu_v{v}"] * (hi - lo)
            scale = p.get(f"scale_v{v}")
            scale_s = None if head == "core" or scale is None or p.get("scale") is None else scale * (hi - lo)
            metrics = evaluate(scores[test], mu, mu, scale_s, (lo, hi), get_distribution("gaussian"))
            entry = {**row.to_dict(), **metrics, "voters": v}
            if scale_s is not None:
                lo90, hi90 = interval(mu, scale_s)
                entry["width90"] = float(np.mean(hi90 - lo90))
            out.append(entry)
    return pd.DataFrame(out)


def voters_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds (Fisher-z-free: one protocol cell per seed is the usual case) per rule x voters."""
    from dae.pipeline.leaderboard import summarise

    parts = []
    for (rule, v), part in rows.groupby(["exemplar_rule", "voters"], sort=True):
        s = summarise(part)
        s["exemplar_rule"], s["voters"] = rule, v
        parts.append(s)
    table = pd.concat(parts, ignore_index=True)
    keep = ["exemplar_rule", "voters"] + [c for c in table.columns if c.endswith(("_mean", "_std"))
                                          and c.split("_")[0] in ("spearman", "rl2x100", "coverage90", "width90")]
    return table[[c for c in keep if c in table.columns]]


def run_voters_study(fs, manifest: pd.DataFrame, plan, voters=VOTERS, rules=None, manifest_name="manifest",
                     note=None):
    """Train plan.head (core or dae-core) once per exemplar rule; every count of `voters` votes. Returns
    (rows, table)."""
    from dae.pipeline.fit import fit_models, score_range_of

    if plan.head not in EXEMPLAR_HEADS:
        raise UsageError(f"dae ablate voters studies the exemplar heads ({', '.join(EXEMPLAR_HEADS)}), "
                         f"not {plan.head!r}")
    voters = sorted({int(v) for v in voters})
    if not voters or voters[0] < 1:
        raise UsageError("--voters takes counts >= 1")
    if rules is None:
        rules = RULES if "difficulty" in manifest.columns else ("any",)
    for rule in rules:
        if rule not in RULES:
            raise UsageError(f"unknown exemplar rule {rule!r} (choose from {', '.join(RULES)})")
    scores = manifest["score"].to_numpy(float)
    lo, hi = score_range_of(manifest, plan)
    parts = []
    for rule in rules:
        options = ExemplarOptions(voters=max(voters), with_dd=rule == "same-difficulty", extra_voters=tuple(voters))
        p = dataclasses.replace(plan, head_options=options)
        rows, _, results = fit_models(fs, manifest, p, manifest_name, note=note)
        parts.append(voter_rows(rows, results, scores, (lo, hi), voters, plan.head))
    rows = pd.concat(parts, ignore_index=True)
    return rows, voters_table(rows)


def run_voters_study_files(features, manifest, plan, voters=VOTERS, rules=None, out=None, leaderboard=None,
                           echo=print, options: dict | None = None):
    """Read the files, run the study, print its table, write the study folder and leaderboard rows.

    options: the command's options, recorded in config.json for `dae ablate voters --config` (pipeline.settings)."""
    from dae.pipeline.machine import software_and_machine
    from dae.pipeline.runner import close_run, input_record, open_run

    run = open_run(features, manifest, plan.dataset, "ablate-voters", out, leaderboard, None, echo)
    fs, df, out = run.fs, run.manifest, run.out
    plan = dataclasses.replace(plan, dataset=run.dataset)
    rows, table = run_voters_study(fs, df, plan, voters, rules, run.manifest_name, note=echo)
    rows["run_dir"] = str(out)
    report = ("study voters: how many exemplars vote, and which exemplar rule "
              f"({plan.head}; test set, mean ± std over seeds; selection {plan.config.selection})\n"
              + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    echo(report)
    meta = {"study": "voters", "head": plan.head, "dataset": plan.dataset, **input_record(features, manifest, fs),
            "voters": list(voters),
            "rules": list(rules) if rules else None, "specs": [dataclasses.asdict(s) for s in plan.specs],
            "train": dataclasses.asdict(plan.config), **software_and_machine(),
            **({"options": options} if options is not None else {})}
    write_study_folder(out, meta, {"metrics": rows, "summary": table}, report)
    close_run(rows, leaderboard, echo, f"study written to {out}")
    return rows, table
