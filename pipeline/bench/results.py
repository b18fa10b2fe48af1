"""Benchmark figures as data: `dae bench ... --results-csv PATH` appends one CSV row per measurement.

A results file is named by what was measured and where (timm's results/benchmark-...-cpu-torch2.13.csv is the model):
`bench-fit-amd-epyc-2core-cpu-torch2.13.csv`. Every row names its machine, CPU, device and software, the date and
the command, so figures of different machines or versions are never read as one series. docs/performance.md's tables
are generated from the files under results/ (`update_doc`; tests/test_docs.py checks they match).
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import re
from pathlib import Path

from dae.errors import DaeError

COLUMNS = ("date_utc", "command", "case", "metric", "value", "unit", "settings", "machine", "cpu", "cores", "device",
           "torch_version", "dae_version", "note")


def machine_fields(device: str = "cpu") -> dict:
    """Where a figure was measured: the machine (GPU name on CUDA, else the CPU model), the CPU, cores, software."""
    import torch

    from dae import __version__
    from dae.pipeline.machine import machine_name

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"machine": machine_name(device), "cpu": machine_name("cpu"), "cores": cores,
            "device": "cuda" if str(device).startswith("cuda") else str(device),
            "torch_version": str(torch.__version__).split("+")[0], "dae_version": __version__}


def results_name(bench: str, fields: dict) -> str:
    """bench-<bench>-<machine>-<cores>core-<device>-torch<major.minor>.csv, lower case, dashes only."""
    machine = re.sub(r"\(r\)|\(tm\)|cpu @.*|processor", "", fields["machine"].lower())
    machine = "-".join(w for w in re.split(r"[^a-z0-9]+", machine) if w)
    torch_minor = ".".join(str(fields["torch_version"]).split(".")[:2])
    return f"bench-{bench}-{machine}-{fields['cores']}core-{fields['device']}-torch{torch_minor}.csv"


def results_path(path, bench: str, fields: dict) -> Path:
    """PATH itself, or inside PATH the file named by `results_name` when PATH is a folder (or ends with a slash)."""
    text = str(path)
    path = Path(path)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / results_name(bench, fields)
    return path


def append_results(path, bench: str, command: str, measurements, settings: str = "", device: str = "cpu",
                   note: str = "") -> Path:
    """Append one row per (case, metric, value, unit) to the results CSV at PATH (a folder: see `results_path`);
    measurements whose value is None are left out. Returns the file written."""
    fields = machine_fields(device)
    target = results_path(path, bench, fields)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.stat().st_size:
        with open(target, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != COLUMNS:
            raise DaeError(f"{target} is not a dae bench results file (its header is not {','.join(COLUMNS)}): "
                           "give another --results-csv")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [{"date_utc": date, "command": command, "case": case, "metric": metric, "value": _plain(value),
             "unit": unit, "settings": settings, "note": note, **fields}
            for case, metric, value, unit in measurements if value is not None]
    new = not target.exists() or target.stat().st_size == 0
    with open(target, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return target


def _plain(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_results(paths):
    """Rows of one or more results CSVs as one DataFrame, with the file's name in a `file` column."""
    import pandas as pd

    frames = [pd.read_csv(p, dtype=str, keep_default_na=False).assign(file=Path(p).name) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*COLUMNS, "file"])


TABLE_START, TABLE_END = "<!-- results-tables: generated from results/*.csv -->", "<!-- end of results-tables -->"


def markdown_tables(paths) -> str:
    """The results files as Markdown, one table per file (what docs/performance.md shows between its markers)."""
    parts = []
    for path in sorted(paths, key=lambda p: Path(p).name):
        rows = read_results([path])
        first = rows.iloc[0] if len(rows) else None
        where = (f"{first.machine}, {first.cores} cores, {first.device}, torch {first.torch_version}"
                 if first is not None else "empty")
        lines = [f"**`results/{Path(path).name}`** ({where})", "",
                 "| date | case | metric | value | unit | note |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r.date_utc[:10]} | {_cell(r.case)} | {r.metric} | {r.value} | {r.unit} | {_cell(r.note)} |"
                  for r in rows.itertuples()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def update_doc(doc, results_dir) -> bool:
    """Rewrite the generated tables between the markers of `doc` from `results_dir`/*.csv; True if it changed."""
    doc = Path(doc)
    text = doc.read_text(encoding="utf-8")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_START}\n{markdown_tables(Path(results_dir).glob('*.csv'))}\n{TABLE_END}{tail}"
    if new != text:
        doc.write_text(new, encoding="utf-8")
    return new != text


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
