"""Named recipes: each method's own training settings as its source code has them, one TOML file per method.

A recipe is named METHOD:NAME (`gdlt:fis-v-tes`, `core:mtl-aqa`, ...): heads/recipes/METHOD.toml, table
[recipe.NAME]. Each recipe says which head trains it (`head`), which dataset card it is for (`dataset`, and the
manifest's `target` where the card has several), a one-line `summary`, optional `notes` (where the recipe cannot
follow its source, and why), and `settings`: one entry per `dae fit` option it sets, each with the value and the
source file:line it comes from (`{ value = 320, source = "fork main.py:86" }`; the file's [sources] table maps the
short key that starts a source to the repository and commit). `base = "OTHER"` starts from another recipe of the
same file and overrides its settings. `unavailable = "why"` marks a recipe whose source cannot run (its settings are
kept for reference): `dae recipes` lists it, and `dae fit --recipe` / `dae ablate pooling --recipe` refuse it with
that reason (`Recipe.check_runnable`). Setting names are `dae fit`'s option names (pipeline/settings.py FIT_DEFAULTS:
epochs, lr, weight_decay, batch_size, optimizer, momentum, nesterov, schedule, eta_min, warmup_epochs, accumulate,
target_scale, selection, crop, dropout, hidden, attention_heads, queries, encoder_layers, decoder_layers,
triplet_weight, margin, voters, with_dd, bins, bin_std, bin_predict, judge_rule, ...); `dae fit --recipe` refuses a
recipe that sets an option fit does not have. Importing this module does not import torch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources

from dae.errors import DaeError, UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

RECIPE_KEYS = {"head", "dataset", "target", "summary", "notes", "base", "settings", "unavailable"}


@dataclass(frozen=True)
class Recipe:
    """One named recipe: settings (option name -> value) and, per setting, the source it comes from."""

    name: str                 # METHOD:NAME
    method: str
    title: str
    head: str
    dataset: str
    target: str | None
    summary: str
    settings: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    notes: tuple = ()
    repositories: dict = field(default_factory=dict)
    unavailable: str = ""     # why the source's recipe cannot run ("" it can)

    def check_runnable(self) -> None:
        """A one-line usage error when the recipe's source cannot run (nothing may be trained under its name)."""
        if self.unavailable:
            raise UsageError(f"recipe {self.name} cannot run: {self.unavailable}")


def _parse(method: str, data: dict, where: str) -> dict[str, Recipe]:
    tables = data.get("recipe", {})
    raw = {}

    def resolve(name, seen=()):
        if name in raw:
            return raw[name]
        if name not in tables:
            raise DaeError(f"{where}: recipe {name!r} is named as a base but not defined")
        if name in seen:
            raise DaeError(f"{where}: recipe {name!r} is its own base")
        table = tables[name]
        unknown = set(table) - RECIPE_KEYS
        if unknown:
            raise DaeError(f"{where}: recipe {name!r} has unknown keys {sorted(unknown)}")
        settings, sources = {}, {}
        if "base" in table:
            base = resolve(table["base"], seen + (name,))
            settings, sources = dict(base["settings"]), dict(base["sources"])
        for key, entry in table.get("settings", {}).items():
            if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
                raise DaeError(f"{where}: {name}.settings.{key} must be {{ value = ..., source = \"file:line\" }}")
            settings[key], sources[key] = entry["value"], entry["source"]
        for key in ("head", "dataset", "summary"):
            if key not in table:
                raise DaeError(f"{where}: recipe {name!r} has no {key}")
        raw[name] = {"table": table, "settings": settings, "sources": sources}
        return raw[name]

    recipes = {}
    for name in tables:
        r = resolve(name)
        t = r["table"]
        full = f"{method}:{name}"
        recipes[full] = Recipe(full, method, data.get("title", method), t["head"], t["dataset"], t.get("target"),
                               t["summary"], r["settings"], r["sources"], tuple(t.get("notes", ())),
                               dict(data.get("sources", {})), t.get("unavailable", ""))
    return recipes


@functools.lru_cache(maxsize=1)
def load_recipes() -> dict[str, Recipe]:
    """Every recipe of every heads/recipes/*.toml, by name (METHOD:NAME), in file then table order."""
    recipes = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        data = tomllib.loads(entry.read_text(encoding="utf-8"))
        method = data.get("method", entry.name[:-5])
        recipes.update(_parse(method, data, f"heads/recipes/{entry.name}"))
    return recipes


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is a usage error that lists the known ones."""
    recipes = load_recipes()
    if name not in recipes:
        raise UsageError(f"unknown recipe {name!r} (choose from {', '.join(recipes)}; `dae recipes` lists them)")
    return recipes[name]


def format_recipes(names=None) -> str:
    """`dae recipes`: every recipe (or those named) with its settings and the source of each."""
    recipes = load_recipes()
    lines = []
    for name in names or recipes:
        r = get_recipe(name)
        target = f", target {r.target}" if r.target else ""
        lines.append(f"{r.name}  ({r.title}; head {r.head}, dataset {r.dataset}{target})")
        lines.append(f"  {r.summary}")
        width = max(len(k) for k in r.settings) if r.settings else 0
        for key, value in r.settings.items():
            shown = str(value).lower() if isinstance(value, bool) else value
            lines.append(f"    {key:<{width}} = {shown!s:<12} {r.sources[key]}")
        if r.unavailable:
            lines.append(f"  cannot run: {r.unavailable}")
        for note in r.notes:
            lines.append(f"  note: {note}")
        lines.append("  sources: " + "; ".join(f"{k} = {v}" for k, v in r.repositories.items()))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
