"""`dae manifest build`: each dataset's official annotation files -> manifest, checked against the derived label CSVs."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dae.errors import DaeError, UsageError
from dae.features.importers import read_object_npy
from dae.manifest import read_manifest
from dae.data_manifests.annotation_files import judge_scores_fixed
from dae.data_manifests.builders import DATASETS, build_manifest
from dae.data_manifests.jigsaws import jigsaws_manifest
from dae.data_manifests.mtl_aqa import mtl_aqa_manifest
from dae.data_manifests.unlv_dive import unlv_dive_manifest
from dae.pipeline.cli import cli

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RAW, LABELS = DATA / "raw", DATA / "labels"
needs_data = pytest.mark.skipif(not (RAW.is_dir() and LABELS.is_dir()),
                                reason=f"reference data not found at {DATA} (../shared/data beside the repository)")

MTL = RAW / "ParitoshParmar_MTL-AQA" / "Ready_2_Use" / "MTL-AQA_split_0_data"
MTL_UNLV = RAW / "ParitoshParmar_MTL-AQA" / "Ready_2_Use" / "UNLV_Dive_split_4"
MUSDL_MTL, MUSDL_JIGSAWS = RAW / "nzl-thu_MUSDL" / "MTL-AQA", RAW / "nzl-thu_MUSDL" / "JIGSAWS"
CORE = RAW / "yuxumin_CoRe"
FINEDIVING = RAW / "xujinglin_FineDiving_tag"
FISV_MSLSTM, FISV_GDLT = RAW / "chmxu_MS_LSTM", RAW / "WHR666777_CVPR22_GDLT"
RG = RAW / "qinghuannn_ACTION-NET"
UNLV_NPY, UNLV_P3D = RAW / "YeTianJHU_diving-score", DATA / "features" / "unlv_dive_p3d"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def labels(name: str) -> pd.DataFrame:
    return pd.read_csv(LABELS / name, dtype={"sample_id": str, "video_id": str, "competition": str,
                                             "trial_id": str, "action_type": str, "dive_number": str})


def by_id(df: pd.DataFrame, id_column: str) -> pd.DataFrame:
    return df.set_index(id_column).sort_index()


# ----------------------------------------------------------------------------------------------------
# builders on hand-made inputs (run everywhere)


def test_judge_typo_over_ten_is_divided_and_reported():
    fixed, fixes = judge_scores_fixed([2.5, 4.0, 45.0, 10.0, 0.0], "x")
    assert fixed == [2.5, 4.0, 4.5, 10.0, 0.0]
    assert fixes == ["judge_3 45.0->4.5"]


def test_judge_value_that_is_no_clean_typo_is_blanked_and_reported():
    fixed, fixes = judge_scores_fixed([55.5, 5.0, 6.0], "x")
    assert np.isnan(fixed[0]) and fixed[1:] == [5.0, 6.0]
    assert fixes == ["judge_1 55.5 outside 0..10, left blank"]
    with pytest.raises(DaeError, match="judge_2"):
        judge_scores_fixed([5.0, "nine"], "x")


def _mtl_entry(score, difficulty=3.0, judges=None, start=100, end=200):
    entry = {"final_score": score, "difficulty": difficulty, "start_frame": start, "end_frame": end,
             "position": 1, "armstand": 0, "rotation_type": 0, "ss_no": 5, "tw_no": 0}
    if judges is not None:
        entry["judge_scores"] = np.asarray(judges)
    return entry


def test_mtl_aqa_rows_ids_splits_and_frames():
    annotations = {(1, 2): _mtl_entry(60.0), (12, 105): _mtl_entry(81.0, start=5, end=90), (3, 3): _mtl_entry(1.0)}
    df, notes = mtl_aqa_manifest(annotations, [(12, 105)], [(np.uint8(1), np.uint8(2))], variant="official")
    assert df["video_id"].tolist() == ["01_02", "12_105"]
    assert df["split"].tolist() == ["test", "train"]
    assert df["path"].tolist() == ["01.mp4", "12.mp4"]
    assert df.loc[1, ["start_frame", "end_frame"]].tolist() == [5, 90]
    assert "judge_1" not in df.columns
    assert notes == ["1 annotated dives are in neither split and were left out"]


def test_mtl_aqa_per_dive_layout_keeps_frames_as_information_only():
    df, _ = mtl_aqa_manifest({(1, 1): _mtl_entry(50.0, judges=[5.0] * 7)}, [(1, 1)], [], variant="musdl",
                                 layout="per-dive")
    assert "path" not in df.columns and "start_frame" not in df.columns
    assert df.loc[0, ["source_start_frame", "source_end_frame"]].tolist() == [100, 200]
    assert df.loc[0, "judge_7"] == 5.0 and df.loc[0, "judges_corrected"] == ""


def test_mtl_aqa_split_key_without_annotation_is_an_error():
    with pytest.raises(DaeError, match=r"first: \(2, 9\)"):
        mtl_aqa_manifest({(1, 1): _mtl_entry(50.0)}, [(1, 1)], [(2, 9)], variant="official")
    with pytest.raises(DaeError, match="both the train and the test split"):
        mtl_aqa_manifest({(1, 1): _mtl_entry(50.0)}, [(1, 1)], [(1, 1)], variant="official")
    with pytest.raises(DaeError, match="has no 'judge_scores' field"):
        mtl_aqa_manifest({(1, 1): _mtl_entry(50.0)}, [(1, 1)], [], variant="musdl")


def test_jigsaws_rows_from_hand_made_pickles():
    labels_dict = {"Suturing_B001": [3, 2, 1, 2, 2, 3], "Suturing_C002": [5, 5, 5, 5, 5, 5],
                   "Knot_Tying_D003": [1, 1, 1, 1, 1, 1]}
    splits = {"Suturing": [["Suturing_C002"], ["Suturing_B001"]], "Knot_Tying": [[], [], ["Knot_Tying_D003"]]}
    df, notes = jigsaws_manifest(labels_dict, splits)
    row = df.set_index("video_id").loc["Suturing_B001"]
    assert (row["score"], row["group"], row["fold"], row["subject"]) == (13.0, "Suturing", 1, "B")
    assert [row[f"judge_{j}"] for j in range(1, 7)] == [3, 2, 1, 2, 2, 3]
    assert row["path"] == "Suturing/video/Suturing_B001_capture1.avi"
    assert df.set_index("video_id").loc["Knot_Tying_D003", "fold"] == 2
    with pytest.raises(DaeError, match=r"'Suturing_B001' has item scores \[3, 2, 1, 2, 2, 6\] outside 1..5"):
        jigsaws_manifest({**labels_dict, "Suturing_B001": [3, 2, 1, 2, 2, 6]}, splits)


def test_fisv_and_rg_lists(tmp_path):
    (tmp_path / "train_dataset.txt").write_text("1 28.71 29.36 1\n3 28.79 27.89 0\n")
    (tmp_path / "test_dataset.txt").write_text("2 28.88 27.08 1\n")
    built = build_manifest("fis-v", tmp_path, target="pcs")
    assert built.manifest["score"].tolist() == [29.36, 27.89, 27.08]
    assert built.manifest["split"].tolist() == ["train", "train", "test"]
    (tmp_path / "test_dataset.txt").write_text("2 28.88 oops 1\n")
    with pytest.raises(DaeError, match=r"test_dataset.txt, line 1: 'oops' is not a number"):
        build_manifest("fis-v", tmp_path, target="tes")

    header = "Video_Name\tDifficulty_Score    Execution_Score Total_Score\tPenalty\tVideo_length\n"
    (tmp_path / "train.txt").write_text(header + "Ball_001\t10.50\t8.30\t18.80\t0.00\t92\n"
                                        "Hoop_002\t7.20\t4.20\t10.80\t0.60\t93\n")
    (tmp_path / "test.txt").write_text(header + "Ball_003\t9.00\t6.95\t15.95\t0.00\t90\n")
    df = build_manifest("rg", tmp_path, target="execution").manifest
    assert df["group"].tolist() == ["Ball", "Hoop", "Ball"]
    assert df["score"].tolist() == [8.3, 4.2, 6.95]


def test_unlv_dive_ids_are_zero_padded_sample_numbers():
    df, notes = unlv_dive_manifest([70.0, 80.0, 90.0, 60.0], [3.0, 3.2, 3.4, 2.8], [[2], [4]], [[1]])
    assert df["video_id"].tolist() == ["001", "002", "004"]
    assert df["split"].tolist() == ["test", "train", "train"]
    assert df["score"].tolist() == [70.0, 80.0, 60.0]
    assert notes == ["1 samples are in neither split and were left out"]
    with pytest.raises(DaeError, match="sample number 5 outside 1..4"):
        unlv_dive_manifest([1.0] * 4, [1.0] * 4, [5], [1])


def test_options_that_do_not_apply_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--variant does not apply to jigsaws"):
        build_manifest("jigsaws", tmp_path, variant="core")
    with pytest.raises(UsageError, match="fis-v --target must be one of tes, pcs"):
        build_manifest("fis-v", tmp_path, target="total")
    with pytest.raises(UsageError, match="fis-v needs --target"):
        build_manifest("fis-v", tmp_path)
    with pytest.raises(UsageError, match="--layout must be one of untrimmed, per-dive"):
        build_manifest("mtl-aqa", tmp_path, layout="trimmed")
    with pytest.raises(UsageError, match="--video-template applies to --layout untrimmed only"):
        build_manifest("mtl-aqa", tmp_path, layout="per-dive", video_template="{event}.mp4")
    with pytest.raises(UsageError, match="unknown dataset 'aqa-7'"):
        build_manifest("aqa-7", tmp_path)


# ----------------------------------------------------------------------------------------------------
# real annotation files vs the derived label CSVs


@needs_data
@pytest.mark.parametrize("folder,variant", [(MTL, "official"), (MUSDL_MTL, "musdl"), (CORE, "core")])
def test_mtl_aqa_matches_labels(folder, variant):
    built = build_manifest("mtl-aqa", folder)
    assert f"mtl-aqa variant: {variant}" in built.notes
    df = by_id(built.manifest, "video_id")
    lab = by_id(labels("mtl_aqa.csv"), "sample_id")
    assert len(df) == 1412 and (df["split"] == "train").sum() == 1059 and (df["split"] == "test").sum() == 353
    assert df.index.tolist() == lab.index.tolist()
    assert (df["split"] == lab["split"]).all()
    np.testing.assert_array_equal(df["score"], lab["final_score"])
    np.testing.assert_array_equal(df["difficulty"], lab["difficulty"])
    np.testing.assert_array_equal(df["start_frame"], lab["start_frame"])
    np.testing.assert_array_equal(df["end_frame"], lab["end_frame"])
    assert (df["path"] == [f"{e:02d}.mp4" for e in lab["event"]]).all()
    for name in ("position", "armstand", "rotation_type", "ss_no", "tw_no"):
        np.testing.assert_array_equal(df[name], lab[name])
    judges = [f"judge_{j}" for j in range(1, 8)]
    if variant == "official":
        assert not set(judges) & set(df.columns)
        return
    # the label CSV holds CoRe's judges; MUSDL's release differs only by its 45.0 typo, which the builder fixes
    np.testing.assert_array_equal(df[judges].to_numpy(), lab[judges].to_numpy())
    corrected = df.index[df["judges_corrected"].fillna("") != ""].tolist()
    assert corrected == (["04_49"] if variant == "musdl" else [])
    assert lab.index[lab["judge_differs_in_musdl_release"] == 1].tolist() == ["04_49"]
    if variant == "core":
        assert (df["dive_number"] == lab["dive_number"]).all()


@needs_data
def test_mtl_aqa_through_the_cli_round_trips_and_reports_the_typo(tmp_path):
    out = tmp_path / "mtl.csv"
    result = run("manifest", "build", "mtl-aqa", "--annotations", MUSDL_MTL, "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "split: test=353, train=1059" in result.output
    assert "04_49: judge_4 45.0->4.5" in result.output  # the note (stderr is mixed into output here)
    df = read_manifest(out)
    assert df.set_index("video_id").loc["04_49", "judge_4"] == 4.5
    assert df.set_index("video_id").loc["04_49", "judges_corrected"] == "judge_4 45.0->4.5"


@needs_data
def test_mtl_aqa_variant_choice_and_dictionary_path(tmp_path):
    for name in ("final_annotations_dict.pkl", "train_split_0.pkl", "test_split_0.pkl"):
        shutil.copy(MTL / name, tmp_path / name)
    shutil.copy(MUSDL_MTL / "augmented_final_annotations_dict.pkl", tmp_path)
    auto = build_manifest("mtl-aqa", tmp_path)
    assert "mtl-aqa variant: musdl" in auto.notes and "judge_1" in auto.manifest.columns
    assert any("several annotation dictionaries" in n for n in auto.notes)
    official = build_manifest("mtl-aqa", tmp_path, variant="official").manifest
    assert "judge_1" not in official.columns and len(official) == 1412
    by_file = build_manifest("mtl-aqa", tmp_path / "final_annotations_dict.pkl", layout="per-dive")
    assert "mtl-aqa variant: official" in by_file.notes and "source_start_frame" in by_file.manifest.columns
    with pytest.raises(UsageError, match="--variant core does not match"):
        build_manifest("mtl-aqa", tmp_path / "final_annotations_dict.pkl", variant="core")
    with pytest.raises(DaeError, match="missing final_annotations_dict_with_dive_number.pkl"):
        build_manifest("mtl-aqa", tmp_path, variant="core")
    templated = build_manifest("mtl-aqa", tmp_path, video_template="videos/{event}.mkv").manifest
    assert templated.set_index("video_id").loc["17_162", "path"] == "videos/17.mkv"


@needs_data
def test_jigsaws_matches_labels_and_musdl_folds():
    df = by_id(build_manifest("jigsaws", MUSDL_JIGSAWS).manifest, "video_id")
    lab = by_id(labels("jigsaws.csv"), "trial_id")
    assert df.index.tolist() == lab.index.tolist()
    assert df["group"].value_counts().to_dict() == {"Suturing": 39, "Knot_Tying": 36, "Needle_Passing": 28}
    assert (df["group"] == lab["task"]).all()
    np.testing.assert_array_equal(df["fold"], lab["musdl_fold"])
    np.testing.assert_array_equal(df["score"], lab["grs_derived_sum"])
    items = ["respect_for_tissue", "suture_needle_handling", "time_and_motion", "flow_of_operation",
             "overall_performance", "quality_of_final_product"]
    np.testing.assert_array_equal(df[[f"judge_{j}" for j in range(1, 7)]].to_numpy(), lab[items].to_numpy())
    assert sorted(df.groupby("group")["fold"].nunique().unique()) == [4]


@needs_data
def test_finediving_matches_labels():
    built = build_manifest("finediving", FINEDIVING)
    df = by_id(built.manifest, "video_id")
    lab = by_id(labels("finediving.csv"), "sample_id")
    assert df.index.tolist() == lab.index.tolist()
    assert df["split"].value_counts().to_dict() == {"train": 2251, "test": 749}
    assert (df["split"] == lab["split"]).all()
    np.testing.assert_array_equal(df["score"], lab["dive_score"])
    np.testing.assert_array_equal(df["difficulty"], lab["difficulty"])
    np.testing.assert_array_equal(df["n_judges"], lab["n_judges"])
    assert (df["dive_number"] == lab["action_type"]).all()
    np.testing.assert_array_equal(df["source_start_frame"], lab["start_frame"])
    np.testing.assert_array_equal(df["source_end_frame"], lab["end_frame"])
    assert "start_frame" not in df.columns  # the released frames are already cut to the dive
    judges = [f"judge_{j}" for j in range(1, 8)]
    corrected = df.index[df["judges_corrected"].fillna("") != ""].tolist()
    assert corrected == ["04__49", "FINAWorldChampionships2019_Women3m_final_r3__1"]
    same = ~df.index.isin(corrected)
    np.testing.assert_array_equal(df.loc[same, judges].to_numpy(), lab.loc[same, judges].to_numpy())
    assert df.loc["04__49", "judge_4"] == 4.5 and lab.loc["04__49", "judge_4"] == 45.0
    r3 = "FINAWorldChampionships2019_Women3m_final_r3__1"
    assert np.isnan(df.loc[r3, "judge_1"]) and lab.loc[r3, "judge_1"] == 55.5
    assert len(built.notes) == 2


@needs_data
@pytest.mark.parametrize("folder", [FISV_MSLSTM, FISV_GDLT])
@pytest.mark.parametrize("target", ["tes", "pcs"])
def test_fisv_matches_labels(folder, target):
    df = by_id(build_manifest("fis-v", folder, target=target).manifest, "video_id")
    lab = by_id(labels("fisv.csv"), "video_id")
    assert df["split"].value_counts().to_dict() == {"train": 400, "test": 100}
    assert sorted(df.index) == sorted(lab.index)
    lab = lab.loc[df.index]
    assert (df["split"] == lab["split"]).all()
    np.testing.assert_array_equal(df["score"], lab[target])
    np.testing.assert_array_equal(df["deductions"], lab["deductions"])
    assert (df["target"] == target).all()


@needs_data
@pytest.mark.parametrize("target,column", [("total", "total_score"), ("difficulty", "difficulty_score"),
                                           ("execution", "execution_score")])
def test_rg_matches_labels(target, column):
    df = by_id(build_manifest("rg", RG, target=None if target == "total" else target).manifest, "video_id")
    lab = by_id(labels("rhythmic_gymnastics.csv"), "video_id")
    assert df.index.tolist() == lab.index.tolist()
    assert df["split"].value_counts().to_dict() == {"train": 800, "test": 200}
    assert df["group"].value_counts().to_dict() == {"Ball": 250, "Clubs": 250, "Hoop": 250, "Ribbon": 250}
    assert (df["group"] == lab["apparatus"]).all() and (df["split"] == lab["split"]).all()
    np.testing.assert_array_equal(df["score"], lab[column])
    np.testing.assert_array_equal(df["penalty"], lab["penalty"])


def _unlv_labels() -> pd.DataFrame:
    lab = labels("aqa7_partial.csv")
    lab = lab[lab["class"] == "diving"].copy()
    lab["video_id"] = [f"{i:03d}" for i in lab["sample_index"]]
    return by_id(lab, "video_id")


@needs_data
@pytest.mark.parametrize("folder", [UNLV_NPY, UNLV_P3D])
def test_unlv_dive_from_npy_matches_labels(folder):
    df = by_id(build_manifest("unlv-dive", folder).manifest, "video_id")
    lab = _unlv_labels()
    assert df.index.tolist() == [f"{i:03d}" for i in range(1, 371)] == lab.index.tolist()
    assert df["split"].value_counts().to_dict() == {"train": 300, "test": 70}
    assert (df["split"] == lab["split"]).all()
    np.testing.assert_array_equal(df["score"], lab["score"])
    np.testing.assert_array_equal(df["difficulty"], lab["difficulty"])


@needs_data
def test_unlv_dive_from_mtl_aqa_pickles_agrees_but_for_three_known_values():
    built = build_manifest("unlv-dive", MTL_UNLV)
    df, lab = by_id(built.manifest, "video_id"), _unlv_labels()
    assert df.index.tolist() == lab.index.tolist()
    assert (df["split"] == lab["split"]).all()
    score_differs = df.index[df["score"] != lab["score"]].tolist()
    assert score_differs == ["073", "345"]
    assert df.loc[score_differs, "score"].tolist() == [88.3, 67.2]
    assert lab.loc[score_differs, "score"].tolist() == [88.2, 67.3]
    dd_differs = df.index[df["difficulty"] != lab["difficulty"]].tolist()
    assert dd_differs == ["133"] and (df.loc["133", "difficulty"], lab.loc["133", "difficulty"]) == (3.3, 3.0)


@needs_data
def test_unlv_dive_ids_and_scores_line_up_with_the_p3d_features():
    """The P3D feature files list their videos by 1-based sample number, columns in training_idx order."""
    df = by_id(build_manifest("unlv-dive", UNLV_NPY).manifest, "video_id")
    for part, index_file in (("train", "training_idx.npy"), ("test", "testing_idx.npy")):
        numbers = np.load(UNLV_P3D / index_file).ravel()
        table = read_object_npy(UNLV_P3D / f"all_{part}.npy")  # a pickle, read with the allow-list
        ids = [f"{n:03d}" for n in numbers]
        assert (df.loc[ids, "split"] == part).all()
        np.testing.assert_allclose(df.loc[ids, "score"].to_numpy(), np.asarray(table[2], dtype=float))


@needs_data
def test_mtl_aqa_builder_refuses_the_unlv_folder():
    with pytest.raises(UsageError, match="use `dae manifest build unlv-dive`"):
        build_manifest("mtl-aqa", MTL_UNLV)


# ----------------------------------------------------------------------------------------------------
# errors through the CLI: exit code, one line, nothing left behind


class _Payload:
    """Unpickling this would call os.mkdir(marker): the restricted unpickler must refuse before that."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _jigsaws_folder(tmp_path, labels_obj, splits_obj=None) -> Path:
    folder = tmp_path / "jigsaws"
    folder.mkdir()
    (folder / "label.pkl").write_bytes(pickle.dumps(labels_obj, protocol=2))
    if splits_obj is not None:
        (folder / "splits.pkl").write_bytes(pickle.dumps(splits_obj, protocol=2))
    return folder


def _assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp file


def test_cli_tampered_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    folder = _jigsaws_folder(tmp_path, {"Suturing_B001": _Payload(str(marker))}, {"Suturing": [["Suturing_B001"]]})
    out = tmp_path / "out.csv"
    result = run("manifest", "build", "jigsaws", "--annotations", folder, "--out", out)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "label.pkl: refusing to load" in line and "mkdir" in line
    assert not marker.exists()
    _assert_nothing_written(out)


def test_cli_missing_file_names_it(tmp_path):
    folder = _jigsaws_folder(tmp_path, {"Suturing_B001": [1] * 6})
    out = tmp_path / "out.csv"
    result = run("manifest", "build", "jigsaws", "--annotations", folder, "--out", out)
    assert result.exit_code == 1
    assert "missing splits.pkl" in one_line_error(result)
    _assert_nothing_written(out)


def test_cli_missing_folder_and_bad_values(tmp_path):
    out = tmp_path / "out.csv"
    result = run("manifest", "build", "rg", "--annotations", tmp_path / "nowhere", "--out", out)
    assert result.exit_code == 1 and "do not exist" in one_line_error(result)
    folder = _jigsaws_folder(tmp_path, {"Suturing_B001": [1, 2, 3, 4, 5, 9]}, {"Suturing": [["Suturing_B001"]]})
    result = run("manifest", "build", "jigsaws", "--annotations", folder, "--out", out)
    assert result.exit_code == 1 and "'Suturing_B001' has item scores" in one_line_error(result)
    _assert_nothing_written(out)


def test_cli_failure_keeps_an_existing_output_untouched(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("video_id,score\nkeep,1\n")
    folder = _jigsaws_folder(tmp_path, {"Suturing_B001": "not six numbers"}, {"Suturing": [["Suturing_B001"]]})
    result = run("manifest", "build", "jigsaws", "--annotations", folder, "--out", out, "--overwrite")
    assert result.exit_code == 1 and "expected 6 item scores" in one_line_error(result)
    assert out.read_text() == "video_id,score\nkeep,1\n"


def test_cli_usage_errors_exit_2(tmp_path):
    out = tmp_path / "out.csv"
    result = run("manifest", "build", "fis-v", "--annotations", tmp_path, "--out", out)
    assert result.exit_code == 2 and "needs --target" in one_line_error(result)
    result = run("manifest", "build", "jigsaws", "--annotations", tmp_path, "--out", out, "--target", "tes")
    assert result.exit_code == 2 and "--target does not apply to jigsaws" in one_line_error(result)
    result = run("manifest", "build", "aqa-7", "--annotations", tmp_path, "--out", out)
    assert result.exit_code == 2
    _assert_nothing_written(out)


@needs_data
def test_cli_wrong_folder_for_the_dataset(tmp_path):
    out = tmp_path / "out.csv"
    result = run("manifest", "build", "jigsaws", "--annotations", MTL, "--out", out)
    assert result.exit_code == 1 and "missing label.pkl" in one_line_error(result)
    result = run("manifest", "build", "fis-v", "--target", "tes", "--annotations", RG, "--out", out)
    assert result.exit_code == 1 and "train.txt, line 1: expected 'id TES PCS deductions'" in one_line_error(result)
    result = run("manifest", "build", "finediving", "--annotations", CORE, "--out", out)
    assert result.exit_code == 1 and "missing FineDiving_coarse_annotation.pkl" in one_line_error(result)
    result = run("manifest", "build", "mtl-aqa", "--annotations", MTL_UNLV, "--out", out)
    assert result.exit_code == 2 and "unlv-dive" in one_line_error(result)
    _assert_nothing_written(out)


@needs_data
def test_cli_unwritable_output_folder(tmp_path):
    out = tmp_path / "no-such-folder" / "out.csv"
    result = run("manifest", "build", "jigsaws", "--annotations", MUSDL_JIGSAWS, "--out", out)
    assert result.exit_code == 1 and "does not exist" in one_line_error(result)
    assert not out.parent.exists()


def test_cli_offers_every_builder_and_explains_paths():
    build = cli.commands["manifest"].commands["build"]
    assert list(build.params[0].type.choices) == list(DATASETS)
    result = run("manifest", "build", "--help")
    assert result.exit_code == 0
    for dataset in DATASETS:
        assert f"\n    {dataset} " in result.output  # one line per dataset saying what PATH it expects
