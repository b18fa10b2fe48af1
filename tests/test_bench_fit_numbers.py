"""`dae bench fit`'s figures agree with each other: the printed speed-ups are the ratio of the printed times, the
achieved GFLOP/s is the study's FLOPs over its time, and each model of the study is one loss x seed."""
import re

import numpy as np
import pytest

from dae.heads.losses import LOSSES
from dae.pipeline.bench.fit import bench_fit, format_bench, head_flops_per_sample


def test_bench_fit_figures_are_consistent():
    rng = np.random.default_rng(0)
    x = rng.random((60, 16)).astype(np.float32)
    targets = rng.random(60)
    result = bench_fit(x, targets, np.arange(45), np.arange(45, 60), seeds=2, epochs=3, batch_size=16,
                       reference_models=2, reference_epochs=1, repeats=2, echo=lambda _: None)
    assert result.models == 2 * len(LOSSES) and len(result.study_seconds) == 2
    best = min(result.study_seconds)
    flops = result.models * 45 * 3 * head_flops_per_sample(16)
    assert result.study_gflops == pytest.approx(flops / best / 1e9, rel=1e-9)
    text = format_bench(result)
    study = re.search(r"study \((\d+) heads x (\d+) epochs, (\d+) x (\d+), batch (\d+)\): ([\d.]+) s", text)
    assert study and study.groups()[:5] == (str(result.models), "3", "45", "16", "16")
    speedups = [float(v) for v in re.findall(r"-> ([\d.]+)x", text)]
    assert speedups == [round(result.reference_seconds / best, 1), round(result.one_by_one_seconds / best, 1)]
    share = re.search(r"= (\d+)% of the fp32 matmul ceiling", text)
    assert int(share.group(1)) == round(100 * result.study_gflops / max(result.matmul_gflops.values()))
    assert f"best of 2: {result.study_seconds[0]:.2f}, {result.study_seconds[1]:.2f}" in text
