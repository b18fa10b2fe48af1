"""Shared pieces of the extraction tests: a small I3D checkpoint file, the CLI, and exact file comparison."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from click.testing import CliRunner

from dae.features.i3d import InceptionI3d
from dae.pipeline.cli import cli

REPO = Path(__file__).resolve().parents[1]
TINY = "uniform:1x9"  # 9 frames is the shortest clip I3D accepts; one clip per video keeps the tests cheap


def random_i3d_checkpoint(path, seed: int = 0) -> Path:
    """A piergiaj-style I3D checkpoint with random weights: the real model code, no download needed.

    Batch-norm statistics are set from one random batch, so that activations keep their scale through the
    network (with default statistics the features shrink to ~1e-6 and every tolerance would pass)."""
    torch.manual_seed(seed)
    model = InceptionI3d(num_classes=8)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = None  # cumulative: the statistics of exactly the batch below
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 9, 224, 224) * 2 - 1)
    torch.save(model.state_dict(), path)
    return Path(path)


def run_cli(args, env=None):
    """`dae ARGS` in this process; returns click's Result (exit_code, output with stderr mixed in)."""
    return CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def dae_subprocess(args, **kwargs) -> subprocess.Popen:
    """`python -m dae ARGS` as a child process (for kills), with stderr and stdout captured."""
    return subprocess.Popen([sys.executable, "-m", "dae", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def file_contents(path) -> dict:
    """Every dataset and root attribute of an HDF5 file, with created_utc left out (it is the run's start time)."""
    with h5py.File(path, "r") as f:
        data = {name: f[name][()] for name in f if isinstance(f[name], h5py.Dataset)}
        attrs = {k: v for k, v in f.attrs.items() if k != "created_utc"}
    return {"data": data, "attrs": attrs}


def assert_same_file(a, b, ignore_attrs=()):
    """Bit for bit equal datasets and equal attributes (except created_utc and `ignore_attrs`)."""
    fa, fb = file_contents(a), file_contents(b)
    assert sorted(fa["data"]) == sorted(fb["data"])
    for name in fa["data"]:
        x, y = fa["data"][name], fb["data"][name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype == object:  # strings
            assert x.tolist() == y.tolist(), f"/{name} differs"
        else:
            assert x.tobytes() == y.tobytes(), f"/{name} differs"
    attrs_a = {k: v for k, v in fa["attrs"].items() if k not in ignore_attrs}
    attrs_b = {k: v for k, v in fb["attrs"].items() if k not in ignore_attrs}
    assert attrs_a.keys() == attrs_b.keys()
    for key in attrs_a:
        assert np.array_equal(attrs_a[key], attrs_b[key]), f"attribute {key}: {attrs_a[key]!r} != {attrs_b[key]!r}"
