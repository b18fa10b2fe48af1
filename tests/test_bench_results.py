"""`dae bench ... --results-csv`: figures appended as data, one row per measurement, in a file named by machine."""
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.pipeline.bench.results import COLUMNS, append_results, machine_fields, results_name
from dae.pipeline.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_fit_appends_one_row_per_figure_named_by_machine_and_software(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=120, dim=32)
    args = ["bench", "fit", "--features", str(features), "--manifest", str(manifest), "--seeds", "1", "--epochs", "2",
            "--reference-models", "1", "--reference-epochs", "1", "--results-csv", str(tmp_path / "results") + "/"]
    for _ in range(2):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
    fields = machine_fields()
    written = tmp_path / "results" / results_name("fit", fields)
    assert f"figures appended to {written}" in res.output
    rows = pd.read_csv(written)
    assert tuple(rows.columns) == COLUMNS
    # two runs of the same figures (wall and CPU time), one header
    half = len(rows) // 2
    assert len(rows) == 2 * half and rows["date_utc"].nunique() <= 2
    assert rows["metric"].iloc[:half].tolist() == rows["metric"].iloc[half:].tolist()
    assert {"study_seconds", "study_cpu_seconds", "dataloader_b8_seconds", "speedup_vs_dataloader_b8",
            "speedup_vs_dataloader_b8_cpu"} <= set(rows["metric"])
    first = rows.iloc[:half].set_index("metric")
    assert first.loc["study_seconds", "unit"] == "s" and first.loc["study_seconds", "value"] > 0
    assert first.loc["speedup_vs_dataloader_b8", "value"] == pytest.approx(
        first.loc["dataloader_b8_seconds", "value"] / first.loc["study_seconds", "value"], rel=1e-4)
    assert set(rows["machine"]) == {fields["machine"]} and set(rows["torch_version"]) == {fields["torch_version"]}
    # the command as typed: the options given, not click's defaults, and not where the results went
    command = rows["command"].iloc[0]
    assert command.startswith("dae bench fit --features ") and "--seeds 1 --epochs 2" in command
    assert "--results-csv" not in command and "--repeats" not in command


def test_results_file_names_and_a_foreign_csv_is_refused(tmp_path):
    cpu = {"machine": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "cores": 2, "device": "cpu",
           "torch_version": "2.13.0"}
    assert results_name("fit", cpu) == "bench-fit-intel-xeon-platinum-8481c-2core-cpu-torch2.13.csv"
    gpu = {"machine": "NVIDIA H100 80GB HBM3", "cores": 16, "device": "cuda", "torch_version": "2.13.0"}
    assert results_name("device", gpu) == "bench-device-nvidia-h100-80gb-hbm3-16core-cuda-torch2.13.csv"
    other = tmp_path / "leaderboard.csv"
    other.write_text("dataset,head\nx,dae\n")
    res_before = other.read_text()
    from dae.errors import DaeError

    with pytest.raises(DaeError, match="not a dae bench results file"):
        append_results(other, "fit", "dae bench fit", [("c", "m", 1.0, "s")])
    assert other.read_text() == res_before
