"""The import graph between the five packages has no arrow upstream (DESIGN.md: manifest CSV -> features -> HDF5 ->
heads -> pipeline; heads/ never imports features/). Every module's imports are read from its source (ast: module
level and inside functions) together with the module paths it names in strings (the head registry's lazy
"module:function" fitters and rebuilders, `importlib.import_module("dae...")`): a lazy import is still an arrow."""
from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folder -> package, upstream first: a package may import its own modules and those above it, never one below
PACKAGES = {"dae_root": "dae", "data_manifests": "dae.data_manifests", "features": "dae.features",
            "heads": "dae.heads", "pipeline": "dae.pipeline"}
ORDER = ["dae", "dae.data_manifests", "dae.features", "dae.heads", "dae.pipeline"]
# arrows the order alone would allow but the design forbids: heads take arrays, never the feature store
FORBIDDEN_SIDEWAYS = {("dae.heads", "dae.features")}
# `python -m dae` is the command line's entry point (it starts dae.pipeline.cli): the top of the stack, not a root
# utility, so it is left out of the root package's arrows
ENTRY_POINTS = {"dae.__main__"}
MODULE_STRING = re.compile(r"^(dae(?:\.[A-Za-z_]\w*)+)(?::[A-Za-z_]\w*)?$")


def package_of(module: str) -> str:
    """The package a dotted module belongs to: the longest of the five that prefixes it, else the root `dae`."""
    for package in sorted(ORDER, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    raise AssertionError(module)


def module_name(path: Path) -> str:
    folder = path.relative_to(ROOT).parts[0]
    rest = path.relative_to(ROOT / folder).with_suffix("").parts
    parts = [p for p in rest if p != "__init__"]
    return ".".join([PACKAGES[folder], *parts])


def imported_modules(path: Path, module: str) -> list[tuple[str, int, str]]:
    """(imported module, line, how) for every import of a dae module in `path`: import statements anywhere in the
    file (relative ones resolved) and string constants that name a dae module (optionally ':function')."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, "import") for a in node.names if a.name.split(".")[0] == "dae"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "dae":
                out.append((target, node.lineno, "import"))
                # `from dae import features` names the subpackage itself
                out += [(f"{target}.{a.name}", node.lineno, "import") for a in node.names
                        if f"{target}.{a.name}" in ORDER]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MODULE_STRING.match(node.value)
            if match:
                out.append((match.group(1), node.lineno, "string"))
    return out


def registry_strings() -> list[str]:
    """The registry's fitters and rebuilders as it builds them (f-strings the ast walk cannot read whole)."""
    from dae.heads.registry import HEADS

    return [getattr(h, what).split(":")[0] for h in HEADS.values() for what in ("fit", "outputs")]


def arrows():
    """[(from package, to package, where)] over every module of the five packages, self-arrows left out."""
    found = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = module_name(path)
            if module in ENTRY_POINTS:
                continue
            for target, line, how in imported_modules(path, module):
                source, dest = package_of(module), package_of(target)
                if source != dest:
                    found.append((source, dest, f"{path.relative_to(ROOT)}:{line} -> {target} ({how})"))
    for target in registry_strings():
        if package_of(target) != "dae.heads":
            found.append(("dae.heads", package_of(target), f"heads/registry.py HEADS -> {target} (registry)"))
    return found


def forbidden(source: str, dest: str) -> bool:
    return ORDER.index(dest) > ORDER.index(source) or (source, dest) in FORBIDDEN_SIDEWAYS


def graph_text(found) -> str:
    counts = Counter((s, d) for s, d, _ in found)
    return "\n".join(f"  {s} -> {d}: {n}{'  (UPSTREAM)' if forbidden(s, d) else ''}"
                     for (s, d), n in sorted(counts.items(), key=lambda kv: (ORDER.index(kv[0][0]),
                                                                             ORDER.index(kv[0][1]))))


def test_no_arrow_points_upstream():
    found = arrows()
    bad = [where for s, d, where in found if forbidden(s, d)]
    assert not bad, ("imports against the packages' order (" + " <- ".join(ORDER) + "; heads never import "
                     "features):\n" + "\n".join("  " + b for b in bad) + "\npackage graph (edges: imports):\n"
                     + graph_text(found))


def test_the_walk_sees_lazy_and_string_imports(tmp_path):
    """The checker reads what the rule is about: an import inside a function, a relative import and a
    'module:function' string are arrows; a sentence that mentions a module is not."""
    source = ("def f():\n    from dae.pipeline import fit\n"
              "from .store import FeatureSet\n"
              "LOADER = 'dae.pipeline.fit:fit_models'\n"
              "MESSAGE = 'see dae.pipeline.splits)'\n")
    path = tmp_path / "_graph_probe.py"
    path.write_text(source, encoding="utf-8")
    tree_targets = [(t, how) for t, _, how in imported_modules(path, "dae.features._graph_probe")]
    assert tree_targets.count(("dae.pipeline", "import")) == 1
    assert ("dae.features.store", "import") in tree_targets
    assert ("dae.pipeline.fit", "string") in tree_targets
    assert not any("splits" in t for t, _ in tree_targets)
    assert forbidden("dae.features", "dae.pipeline") and forbidden("dae.heads", "dae.features")
    assert not forbidden("dae.pipeline", "dae.heads") and not forbidden("dae.features", "dae.data_manifests")
