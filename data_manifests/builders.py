"""`dae manifest build`: each dataset's module turns its official annotation files into a manifest; this picks one."""
from __future__ import annotations

from dae.atomic import check_new_file
from dae.data_manifests import finediving, fis_v, jigsaws, mtl_aqa, rg, unlv_dive
from dae.data_manifests.annotation_files import BuiltManifest
from dae.errors import UsageError
from dae.manifest import validate_manifest, write_manifest

_MODULES = (mtl_aqa, jigsaws, finediving, fis_v, rg, unlv_dive)
DATASETS = tuple(m.NAME for m in _MODULES)
# What PATH each dataset expects; shown in "missing file" errors.
EXPECTS = {m.NAME: m.EXPECTS for m in _MODULES}
# Which options each dataset takes (anything else is a usage error).
OPTIONS = {m.NAME: m.OPTIONS for m in _MODULES}
TARGETS = {fis_v.NAME: fis_v.TARGETS, rg.NAME: rg.TARGETS}
TARGET_CHOICES = tuple(dict.fromkeys(t for targets in TARGETS.values() for t in targets))

_BUILDERS = {"mtl-aqa": mtl_aqa.build_mtl_aqa, "jigsaws": jigsaws.build_jigsaws,
             "finediving": finediving.build_finediving, "fis-v": fis_v.build_fisv, "rg": rg.build_rg,
             "unlv-dive": unlv_dive.build_unlv_dive}


def build_manifest(dataset: str, annotations, **options) -> BuiltManifest:
    """Build DATASET's manifest from its official annotation files; options that are None are unset."""
    if dataset not in _BUILDERS:
        raise UsageError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - OPTIONS[dataset])
    if extra:
        flag = "--" + extra[0].replace("_", "-")
        raise UsageError(f"{flag} does not apply to {dataset}")
    if "target" in given and given["target"] not in TARGETS[dataset]:
        raise UsageError(f"{dataset} --target must be one of {', '.join(TARGETS[dataset])} (got {given['target']!r})")
    for name, allowed in (("layout", mtl_aqa.LAYOUTS), ("view", jigsaws.JIGSAWS_VIEWS),
                          ("variant", mtl_aqa.VARIANT_CHOICES)):
        if name in given and given[name] not in allowed:
            raise UsageError(f"--{name} must be one of {', '.join(allowed)} (got {given[name]!r})")
    if given.get("layout") == "per-dive" and "video_template" in given:
        raise UsageError("--video-template applies to --layout untrimmed only")
    built = _BUILDERS[dataset](annotations, **given)
    built.manifest = validate_manifest(built.manifest, f"{dataset} manifest built from {annotations}")
    return built


def build_manifest_file(dataset: str, annotations, out, *, overwrite: bool = False, **options) -> BuiltManifest:
    """Build and write the manifest CSV atomically (nothing is written when anything fails); an existing `out`
    is replaced only with `overwrite`."""
    check_new_file(out, overwrite, "manifest")
    built = build_manifest(dataset, annotations, **options)
    write_manifest(built.manifest, out)
    return built
