"""Dataset cards: every buildable dataset has one, its fields are usable, and a wheel ships them."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dae.data_manifests import cards
from dae.errors import UsageError
from dae.features.clips import parse_protocol
from dae.data_manifests import builders as ann

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RAW = DATA / "raw"
needs_data = pytest.mark.skipif(not RAW.is_dir(), reason=f"reference data not found at {DATA}")


def test_one_card_per_buildable_dataset():
    assert cards.card_names() == sorted(ann.DATASETS)


@pytest.mark.parametrize("name", sorted(ann.DATASETS))
def test_card_fields_are_usable(name):
    card = cards.load_card(name)
    assert card["name"] == name
    lo, hi = cards.score_range(card)
    assert lo < hi and [lo, hi] == card["score_range"]
    parse_protocol(card["clip_protocol"])  # a protocol name that stage one understands
    assert card["group_average"] in ("none", "fisher-z") and card["fold_average"] in ("none", "fisher-z")
    assert card["selection_rules"][0] == "last"  # our default comes first
    for target in card.get("targets", {}):
        t_lo, t_hi = cards.score_range(card, target)
        assert t_lo < t_hi
    for row in card["published"]:
        assert 0 < row["value"] <= 1 and row["metric"] == "spearman"
        assert row["backbone"].endswith("-finetuned")  # every published number fine-tunes its backbone


def test_published_reference_rows_from_issue_5():
    mtl = {row["method"]: row["value"] for row in cards.load_card("mtl-aqa")["published"]}
    assert mtl == {"DAE": 0.9231, "DAE-MT": 0.9452, "DAE-CoRe": 0.9589, "USDL": 0.9064, "MUSDL": 0.9306,
                   "C3D-AVG-MTL": 0.9044, "I3D+MLP (with DD)": 0.9381, "CoRe (without DD)": 0.9341,
                   "TSA-Net": 0.9393, "TPT": 0.9607, "CoRe (with DD)": 0.9512}
    jig = {(row["method"], row["group"]): row["value"] for row in cards.load_card("jigsaws")["published"]}
    assert jig == {("DAE", "average"): 0.72, ("DAE-MT", "average"): 0.76, ("DAE-CoRe", "average"): 0.86,
                   ("MUSDL", "Suturing"): 0.71, ("MUSDL", "Needle_Passing"): 0.69, ("MUSDL", "Knot_Tying"): 0.71,
                   ("MUSDL", "average"): 0.70, ("CoRe", "average"): 0.85}


def test_core_reference_rows_name_their_table_and_setting():
    rows = [(name, row) for name in ("mtl-aqa", "jigsaws", "unlv-dive") for row in cards.load_card(name)["published"]
            if "CoRe" in row["method"]]
    assert {(n, r["method"]) for n, r in rows} == {
        ("mtl-aqa", "CoRe (with DD)"), ("mtl-aqa", "CoRe (without DD)"), ("mtl-aqa", "DAE-CoRe"),
        ("jigsaws", "CoRe"), ("jigsaws", "DAE-CoRe"), ("unlv-dive", "CoRe (AQA-7 average)")}
    assert all(r["backbone"] == "i3d-finetuned" for _, r in rows)
    assert all("table" in r["note"] for n, r in rows if r["method"].startswith("CoRe (") or n == "jigsaws"
               and r["method"] == "CoRe")


def test_every_published_number_names_where_it_is_printed():
    for name in cards.card_names():
        for row in cards.load_card(name)["published"]:
            assert row["source"].startswith(("paper: ", "repository: ")), (name, row["method"])
    mtl = {row["method"]: row for row in cards.load_card("mtl-aqa")["published"]}
    for method in ("USDL", "MUSDL"):  # best test epochs of the MUSDL repository's logs, not the CVPR table
        assert mtl[method]["source"].startswith(f"repository: nzl-thu/MUSDL @ 274ad6b, MTL-AQA/exp/{method}.log")
        logged = float(mtl[method]["source"].split("best test correlation ")[1].split()[0])
        assert round(logged, 4) == mtl[method]["value"] and mtl[method]["selection"] == "best-test"
    bad = {**cards.load_card("jigsaws"), "published": [{**cards.load_card("jigsaws")["published"][0],
                                                         "source": "CVPR 2020"}]}
    with pytest.raises(cards.DaeError, match="source must name"):
        cards.check_card(bad, "jigsaws.toml")


@needs_data
def test_jigsaws_musdl_numbers_are_the_repositorys_spreadsheet():
    """The MUSDL rows cite nzl-thu/MUSDL's JIGSAWS_avg.xls by cell: read those cells from the shared copy."""
    sheet = __import__("pandas").read_excel(RAW / "nzl-thu_MUSDL" / "JIGSAWS" / "JIGSAWS_avg.xls", header=None)
    cell = lambda ref: sheet.iloc[int(ref[1:]) - 1, ord(ref[0]) - ord("A")]
    for row in cards.load_card("jigsaws")["published"]:
        if row["source"].startswith("repository: nzl-thu/MUSDL @ 274ad6b, JIGSAWS/JIGSAWS_avg.xls, cell "):
            ref = row["source"].split(", cell ")[1].split()[0]
            assert round(float(cell(ref)), 2) == row["value"], (row["group"], ref)


def test_jigsaws_group_names_match_the_manifest_groups():
    groups = {row["group"] for row in cards.load_card("jigsaws")["published"]} - {"average"}
    assert groups == {"Suturing", "Needle_Passing", "Knot_Tying"}


def test_unknown_card_and_target():
    with pytest.raises(UsageError, match=r"unknown dataset 'aqa-7' \(known: finediving, fis-v, jigsaws"):
        cards.load_card("aqa-7")
    with pytest.raises(UsageError, match="has no target 'pcs'"):
        cards.score_range("mtl-aqa", "pcs")
    assert cards.score_range("fis-v", "pcs") == (10.48, 38.28)


@needs_data
@pytest.mark.parametrize("dataset,folder,target", [
    ("mtl-aqa", "yuxumin_CoRe", None), ("jigsaws", "nzl-thu_MUSDL/JIGSAWS", None),
    ("finediving", "xujinglin_FineDiving_tag", None), ("fis-v", "chmxu_MS_LSTM", "tes"),
    ("fis-v", "chmxu_MS_LSTM", "pcs"), ("rg", "qinghuannn_ACTION-NET", "total"),
    ("rg", "qinghuannn_ACTION-NET", "difficulty"), ("rg", "qinghuannn_ACTION-NET", "execution"),
    ("unlv-dive", "YeTianJHU_diving-score", None)])
def test_card_score_ranges_span_the_data(dataset, folder, target):
    """Ranges taken 'from the data' are exactly the data's min..max; none cuts off a real score."""
    scores = ann.build_manifest(dataset, RAW / folder, target=target).manifest["score"]
    lo, hi = cards.score_range(dataset, target)
    assert (scores.min(), scores.max()) == (lo, hi)


def test_wheel_ships_the_cards(tmp_path):
    """A non-editable build (what `pip install .` installs) carries the TOML files and reads them."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("dae_root", "features", "heads", "pipeline", "data_manifests"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("dae\n")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.rsplit("/", 1)[1][:-5] for n in names if n.startswith("dae/data_manifests/") and n.endswith(".toml"))
    assert shipped == sorted(ann.DATASETS)
    assert not [n for n in names if n.split("/")[0] in ("features", "heads", "pipeline", "data_manifests")]
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = ("import dae.data_manifests.cards as c; "
             "print(c.__file__); print(len(c.card_names()), c.load_card('jigsaws')['score_range'])")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r}); {probe}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, loaded = out.stdout.splitlines()
    assert Path(module_file).is_relative_to(unpacked)  # the wheel's copy, not the source tree
    assert loaded == f"{len(ann.DATASETS)} [6.0, 30.0]"


OFFICIAL_FILES = {"unlv-dive": [("YeTianJHU_diving-score", {}),
                                ("ParitoshParmar_MTL-AQA/Ready_2_Use/UNLV_Dive_split_4", {})],
                  "mtl-aqa": [("ParitoshParmar_MTL-AQA/Ready_2_Use/MTL-AQA_split_0_data", {})],
                  "fis-v": [("chmxu_MS_LSTM", {"target": "tes"}), ("WHR666777_CVPR22_GDLT", {"target": "pcs"})],
                  "finediving": [("xujinglin_FineDiving_tag", {})],
                  "rg": [("qinghuannn_ACTION-NET", {})],
                  "jigsaws": [("nzl-thu_MUSDL/JIGSAWS", {})]}


@needs_data
@pytest.mark.parametrize("name", sorted(OFFICIAL_FILES))
def test_each_cards_official_split_is_what_its_builder_reads_from_the_official_files(name):
    """The sha256 a card stores (no ids are stored) is the split `dae manifest build` writes from every official
    source it reads; its id pattern and video count fit those ids."""
    import re

    from dae.pipeline.splits import official_split, row_identity

    card = cards.load_card(name)
    assert set(OFFICIAL_FILES) == set(cards.card_names())
    for folder, options in OFFICIAL_FILES[name]:
        path = RAW / folder
        if not path.is_dir():
            continue
        manifest = ann.build_manifest(name, path, **options).manifest
        assert official_split(card, manifest) == (True, ""), (name, folder)
        assert row_identity(name, manifest)["split_protocol"] == "official"
        assert len(manifest) == card["video_count"]
        assert manifest["video_id"].astype(str).map(lambda v: re.fullmatch(card["id_pattern"], v) is not None).all()


def test_a_card_without_the_hash_of_its_official_split_is_invalid():
    card = cards.load_card("unlv-dive")
    card["official_split"] = {"train": 300, "test": 70}
    with pytest.raises(cards.DaeError, match="official_split needs test_ids_sha256"):
        cards.check_card(card, "unlv-dive.toml")
