"""Published reference rows from the dataset cards, shown beside our leaderboard (`dae leaderboard show`).

Ours: one line per configuration, mean ± std over seeds of the protocol's average (Fisher z over folds and
groups, or the card's rule), trained on cached, frozen features. Theirs: the number the paper reports, with
the paper, its selection rule and its backbone setting (all current reference rows fine-tune the backbone end
to end: a different, stronger setting, so the two are side by side, not like for like).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dae.errors import DaeError, UsageError

FORMATS = ("table", "csv", "markdown")
SHOWN_METRICS = (("spearman", 4), ("rl2x100", 3), ("crps", 3), ("coverage90", 2))
SETTING = {"this-run": "cached features", "published": "fine-tuned"}
# settings that have their own column in the table; the others appear in `settings` where they tell lines apart
SHOWN_SETTINGS = ("source", "dataset", "target", "split_protocol", "head", "loss", "distribution", "reparam", "prediction", "selection",
                  "uses_difficulty", "backbone")
NOTE = ("ours: mean ± std over seeds of heads trained on cached features (the backbone column names them; "
        "not fine-tuned here); published: as reported, backbone fine-tuned end to end -- a different setting, "
        "not a like-for-like comparison.")


def published_rows(datasets=None) -> pd.DataFrame:
    """The `[[published]]` rows of the given dataset cards (default: all), leaderboard-shaped."""
    from dae.data_manifests.cards import card_names, load_card

    rows = []
    for name in datasets if datasets is not None else card_names():
        card = load_card(name)
        has_dd = "difficulty" in card.get("columns", [])
        for ref in card["published"]:
            rows.append({
                "source": "published", "dataset": name, "group": ref["group"], "head": ref["method"],
                "selection": ref.get("selection", "not stated"), "backbone": ref["backbone"],
                "split_protocol": "official",
                "uses_difficulty": ref.get("uses_difficulty", "not stated" if has_dd else "no"),
                f"{ref['metric']}_mean": float(ref["value"]), "paper": ref["paper"], "reference": ref["source"],
                "note": ref.get("note", ""),
            })
    return pd.DataFrame(rows)


def not_comparable(rows: pd.DataFrame) -> pd.Series:
    """Rows of a dataset with a card that are not on its official split (a development split, or a split that was
    not recorded): never shown beside the card's published rows."""
    from dae.data_manifests.cards import card_names

    carded = rows["dataset"].astype(str).isin(card_names()) if "dataset" in rows else pd.Series(False, rows.index)
    protocol = rows["split_protocol"].fillna("").astype(str) if "split_protocol" in rows else \
        pd.Series("", index=rows.index)
    return carded & (protocol != "official")


def left_out_notes(rows: pd.DataFrame, datasets=None) -> list[str]:
    """--published: one line per dataset and split whose rows were left out (not the card's official split)."""
    ours = rows[rows["source"].fillna("this-run") != "published"] if "source" in rows else rows
    if datasets is not None:
        ours = ours[ours["dataset"].astype(str).isin(list(datasets))]
    dropped = ours[not_comparable(ours)]
    if not len(dropped):
        return []
    notes = []
    split = dropped["split_sha256"].fillna("").astype(str) if "split_sha256" in dropped else \
        pd.Series("", index=dropped.index)
    for (dataset, sha), part in dropped.groupby([dropped["dataset"].astype(str), split], sort=False):
        if not sha:
            notes.append(f"--published: {len(part)} {dataset} row(s) left out: their split was not recorded (written "
                         f"before dae recorded split identity), so it cannot be shown to be {dataset}'s official split")
            continue
        folds = part["fold"].fillna("").astype(str) if "fold" in part else pd.Series("", index=part.index)
        if (folds != "").any():
            shape = f"{folds.nunique()}-fold cross-validation"
        else:
            shape = f"{_cell(part['n_train'].iloc[0])} train / {_cell(part['n_test'].iloc[0])} test"
        notes.append(f"--published: {len(part)} {dataset} row(s) left out: development split of {dataset}: {shape}, "
                     f"not the official split (split {sha[:12]}); shown without --published")
    return notes


def _variant(row) -> str:
    parts = [str(row.get(k, "")) for k in ("loss", "distribution", "reparam", "prediction")]
    return " ".join(p for p in parts if p and p != "nan")


def leaderboard_table(rows: pd.DataFrame, published: bool = False, datasets=None, by_group: bool = False,
                      fold_average: str | None = None) -> pd.DataFrame:
    """Ours (summarised per configuration by `leaderboard.summarise`) then, per dataset, the published rows.

    fold_average None follows each dataset's card (Fisher z where the card has none); `mean` is MUSDL's.
    The `settings` column names the settings that tell our lines of one dataset apart."""
    from dae.data_manifests.cards import card_names
    from dae.pipeline.leaderboard import distinguishing_settings, settings_label, setting_columns, summarise

    ours = rows[rows["source"].fillna("this-run") != "published"] if "source" in rows else rows
    if datasets is not None:
        ours = ours[ours["dataset"].astype(str).isin(list(datasets))]
    if published:  # only rows on a card's official split stand beside its published rows
        ours = ours[~not_comparable(ours)]
    known = set(card_names())
    table = summarise(ours, fold_average=fold_average, by_group=by_group) if len(ours) else pd.DataFrame()
    setting_keys = []
    if len(table):
        table["variant"] = [_variant(r) for _, r in table.iterrows()]
        table["source"] = "this-run"
        table["settings"] = ""
        for _, idx in table.groupby("dataset", sort=False).groups.items():
            varying, _ = distinguishing_settings(table.loc[idx], SHOWN_SETTINGS)
            table.loc[idx, "settings"] = [settings_label(r, varying) for _, r in table.loc[idx].iterrows()]
        setting_keys = [k for k in setting_columns(table) if k in table.columns and k not in SHOWN_SETTINGS]
    if published:
        names = list(datasets) if datasets is not None else [d for d in table.get("dataset", []) if d in known]
        ref = published_rows(list(dict.fromkeys(names)))
        if not by_group and len(ref):
            ref = ref[ref["group"].isin(["all", "average"])]
        table = pd.concat([table, ref], ignore_index=True)
    if not len(table):
        return table
    table["setting"] = table["source"].map(SETTING).fillna("")
    order = {d: i for i, d in enumerate(dict.fromkeys(table["dataset"]))}
    table["_order"] = table["dataset"].map(order)
    table = table.sort_values(["_order", "source"], ascending=[True, False], kind="stable").drop(columns="_order")
    columns = ["source", "setting", "dataset", "group", "head", "variant", "selection", "uses_difficulty",
               "backbone", "target", "split_protocol", "settings", "seeds", "units_per_seed", "fold_average"]
    for metric, _ in SHOWN_METRICS:
        columns += [f"{metric}_mean", f"{metric}_std"]
    columns += ["spearman_degenerate", "spearman_nan", "paper", "reference", "note"]
    columns += [k for k in setting_keys if k not in columns]
    return table.reindex(columns=columns).reset_index(drop=True)


def _cell(value, digits=None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if digits is not None:
        return f"{float(value):.{digits}f}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _published_number(value) -> str:
    if pd.isna(value):
        return "-"
    value = float(value)
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


def _short_reference(paper: str) -> str:
    """'Tang et al., Title, CVPR 2020' -> 'Tang et al., CVPR 2020'."""
    parts = [p.strip() for p in paper.split(",")]
    return f"{parts[0]}, {parts[-1]}" if len(parts) > 2 else paper


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Strings for reading: `mean ± std` for ours, the published value alone for theirs."""
    out = pd.DataFrame({
        "source": table["source"], "setting": table["setting"], "dataset": table["dataset"], "group": table["group"], "method": table["head"],
        "variant": table["variant"], "selection": table["selection"], "DD": table["uses_difficulty"],
        "backbone": table["backbone"], "target": table["target"], "split": table["split_protocol"],
        "settings": table["settings"], "seeds": [_cell(v) for v in table["seeds"]],
    })
    if not out["settings"].fillna("").astype(str).str.len().any():
        out = out.drop(columns="settings")
    for metric, digits in SHOWN_METRICS:
        cells = []
        for source, mean, std in zip(table["source"], table[f"{metric}_mean"], table[f"{metric}_std"]):
            if source == "published":  # as published: no added digits (0.70 stays 0.70, 0.9231 stays 0.9231)
                cell = _published_number(mean)
            else:
                cell = _cell(mean, digits) or "-"
                if cell != "-" and pd.notna(std):
                    cell += f" ± {float(std):.{digits}f}"
            cells.append(cell)
        out[metric] = cells
    out["paper"] = [_short_reference(_cell(p)) for p in table["paper"]]
    out["number from"] = [_cell(r) for r in table["reference"]]
    return out.fillna("")


def table_notes(table: pd.DataFrame) -> list[str]:
    """Below the table: per dataset, the settings all our lines share; then degenerate or undefined folds."""
    from dae.pipeline.leaderboard import degenerate_notes, distinguishing_settings, settings_label

    ours = table[table["source"] == "this-run"] if "source" in table else table.iloc[:0]
    notes = []
    for dataset, part in ours.groupby("dataset", sort=False):
        _, shared = distinguishing_settings(part.drop(columns=[c for c in SHOWN_SETTINGS if c in part.columns]))
        if shared:
            notes.append(f"{dataset}, shared by every line: {settings_label(shared, list(shared))}")
    label = lambda r: " ".join(str(r[k]) for k in ("dataset", "group", "head", "variant", "settings")
                               if isinstance(r.get(k), str) and r.get(k))
    return notes + degenerate_notes(ours, label)


def render(table: pd.DataFrame, fmt: str = "table") -> str:
    """The table as aligned text, CSV (numeric columns) or Markdown, with the setting note."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not len(table):
        return "(no rows)"
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    shown = display_table(table)
    notes = table_notes(table)
    if fmt == "markdown":
        head = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in shown.to_numpy()]
        return "\n".join([head, rule, *body, "", *[f"- {n}" for n in notes], *([""] if notes else []), f"_{NOTE}_"])
    return shown.to_string(index=False) + "\n\n" + "".join(f"{n}\n" for n in notes) + NOTE


def show_leaderboard(path, published: bool = False, fmt: str = "table", datasets=None, by_group: bool = False,
                     fold_average: str | None = None) -> str:
    """Read a leaderboard CSV and render it with (optionally) the published reference rows."""
    from dae.pipeline.leaderboard import read_leaderboard

    rows = read_leaderboard(path)
    missing = [c for c in ("dataset", "head", "seed", "spearman") if c not in rows.columns]
    if missing:
        raise DaeError(f"leaderboard {path} lacks column(s) {', '.join(missing)}")
    table = leaderboard_table(rows, published, datasets, by_group, fold_average)
    text = render(table, fmt)
    if published and fmt != "csv":
        notes = left_out_notes(rows, datasets) + without_published_rows(table)
        text += "".join(f"\n{note}" for note in notes) if fmt == "table" else "".join(f"\n\n_{n}_" for n in notes)
    return text


def without_published_rows(table: pd.DataFrame) -> list[str]:
    """--published: one line per dataset of ours that has no published row to show beside it."""
    from dae.data_manifests.cards import card_names

    if not len(table):
        return []
    have = set(table.loc[table["source"] == "published", "dataset"])
    notes = []
    for dataset in dict.fromkeys(table.loc[table["source"] == "this-run", "dataset"]):
        if dataset in have:
            continue
        if dataset in card_names():
            notes.append(f"--published: the {dataset} card lists no published rows yet")
        else:
            notes.append(f"--published: {dataset} has no dataset card, so no published rows")
    return notes
