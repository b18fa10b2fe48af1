"""One level of CoRe's tree for rows that each follow one path: node j's 2-way classifier and the layer of the
path's child k, out[r] = weight[k] @ h[r] + bias[k] and logits[r] = clf_w[j] @ h[r] + clf_b[j].

CoRe's tree sends each pair down one path, so at every level a row meets one node out of many, and a training
batch has only a few rows per node: the cost is reading each node's weights, not the arithmetic. The rows come
sorted by child group (the tree's rows sorted by leaf are), with `starts` (2N + 1,) marking where each of the 2N
child groups begins (node j's children are groups 2j and 2j + 1; a group may have no rows).

On the CPU (layer widths a multiple of 4) three numba kernels (forward, the weights' gradients, the input's
gradient) read each node's weights once, in parallel over nodes; a node or child without rows gets a zero
gradient. Doing the classifier in the same pass saves the small per-level operations that otherwise cost as much
as the layer. Elsewhere (CUDA, other widths, or without numba) the same level is a zero-padded batched matmul (one
block of the largest group's height per child group) and a gathered classifier: on a CPU 2.5x slower at the
tree's last level (80 groups of 256 x 256, 4 rows each on average). Both give the same values up to float rounding
(tested).
"""
from __future__ import annotations

import threading
import time
import warnings

import torch

_KERNELS = None
# numba's fallback threading layer (workqueue, where OpenMP is missing) aborts the process on concurrent kernel
# launches from two threads (a threaded dask worker running two fits): launches take turns
_LAUNCH = threading.Lock()


def tree_level(h: torch.Tensor, clf_w: torch.Tensor, clf_b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               starts: torch.Tensor, padded: bool = False):
    """h (R, I) sorted by child group; clf_w (N, 2, I), clf_b (N, 2), weight (2N, O, I), bias (2N, O), starts
    (2N + 1,) int64 on the CPU -> (logits (R, 2), out (R, O)).

    padded: use the padded batched matmul even where the kernels could run (for comparison)."""
    if (not padded and h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)
            and weight.shape[1] % 4 == 0 and clf_w.shape[1] == 2 and _kernels()):
        return _KernelLevel.apply(h, clf_w, clf_b, weight, bias, starts)
    starts = starts.to(h.device)
    counts = starts[1:] - starts[:-1]
    child = torch.repeat_interleave(torch.arange(weight.shape[0], device=h.device), counts)
    node = child >> 1
    logits = torch.einsum("ri,rti->rt", h, clf_w[node]) + clf_b[node]
    return logits, _padded(h, weight, bias, starts, child, counts)


def warm_up() -> float:
    """Compile the kernels (or load them from numba's cache) on a tiny level; the seconds it took (0.0 where the
    kernels are not used). The first CoRe fit after installing compiles them once (several seconds)."""
    start = time.perf_counter()
    if not _kernels():
        return 0.0
    h = torch.zeros(4, 4, requires_grad=True)
    logits, out = tree_level(h, torch.zeros(1, 2, 4), torch.zeros(1, 2), torch.zeros(2, 4, 4, requires_grad=True),
                             torch.zeros(2, 4), torch.tensor([0, 2, 4]))
    (logits.sum() + out.sum()).backward()
    return time.perf_counter() - start


def _kernels():
    """The compiled kernels, or None (numba missing: then the padded path, with one warning)."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from dae.heads import grouped_kernels
        except ImportError as exc:
            warnings.warn(f"numba is not available ({exc}); CoRe's tree runs a slower padded matmul on the CPU",
                          RuntimeWarning, stacklevel=3)
            _KERNELS = False
        else:
            _KERNELS = grouped_kernels
    return _KERNELS or None


def _numpy(t: torch.Tensor):
    return t.detach().contiguous().numpy()


class _KernelLevel(torch.autograd.Function):
    """`tree_level` on the kernels; the arrays they read are contiguous numpy views of the tensors."""

    @staticmethod
    def forward(ctx, h, clf_w, clf_b, weight, bias, starts):
        k = _kernels()
        k.use_threads(torch.get_num_threads())
        h, clf_w, weight = h.contiguous(), clf_w.contiguous(), weight.contiguous()  # saved for the backward
        starts = starts.to(torch.int64).contiguous()
        logits = h.new_empty(h.shape[0], clf_w.shape[1])
        out = h.new_empty(h.shape[0], weight.shape[1])
        with _LAUNCH:
            k.forward(_numpy(h), _numpy(clf_w), _numpy(clf_b), _numpy(weight), _numpy(bias), starts.numpy(),
                      logits.numpy(), out.numpy())
        ctx.save_for_backward(h, clf_w, weight, starts)
        return logits, out

    @staticmethod
    def backward(ctx, grad_logits, grad_out):
        k = _kernels()
        h, clf_w, weight, starts = ctx.saved_tensors
        gl, go = _numpy(grad_logits), _numpy(grad_out)
        grad_clf_w, grad_weight = torch.empty_like(clf_w), torch.empty_like(weight)
        grad_clf_b, grad_bias = clf_w.new_empty(clf_w.shape[:2]), weight.new_empty(weight.shape[:2])
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        with _LAUNCH:
            k.weight_grad(_numpy(h), gl, go, starts.numpy(), grad_clf_w.numpy(), grad_clf_b.numpy(),
                          grad_weight.numpy(), grad_bias.numpy())
            if grad_h is not None:
                k.input_grad(_numpy(clf_w), _numpy(weight), gl, go, starts.numpy(), grad_h.numpy())
        return grad_h, grad_clf_w, grad_clf_b, grad_weight, grad_bias, None


def _padded(h, weight, bias, starts, group, counts):
    """The batched-matmul form: rows placed by group into a zero-padded (G, P, I) block, one bmm, taken back."""
    n_groups = weight.shape[0]
    width = max(int(counts.max()), 1)
    pos = group * width + (torch.arange(h.shape[0], device=h.device) - starts[group])
    block = _PlaceRows.apply(h, pos, n_groups * width)
    out = _GroupMatmul.apply(block.view(n_groups, width, -1), weight, bias)
    return _TakeRows.apply(out.reshape(n_groups * width, -1), pos)


class _PlaceRows(torch.autograd.Function):
    """out (n, ...) zero except out[pos] = x, for distinct positions pos (R,): a scatter whose gradient is a gather
    (torch's own index backward accumulates with scatter_add, which is slow on a CPU)."""

    @staticmethod
    def forward(ctx, x, pos, n):
        ctx.save_for_backward(pos)
        out = x.new_zeros(n, *x.shape[1:])
        out[pos] = x
        return out

    @staticmethod
    def backward(ctx, grad):
        (pos,) = ctx.saved_tensors
        return grad[pos], None, None


class _TakeRows(torch.autograd.Function):
    """x[pos] for distinct positions pos (R,), with the gradient placed back without accumulation."""

    @staticmethod
    def forward(ctx, x, pos):
        ctx.save_for_backward(pos)
        ctx.rows = x.shape[0]
        return x[pos]

    @staticmethod
    def backward(ctx, grad):
        (pos,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, *grad.shape[1:])
        out[pos] = grad
        return out, None


class _GroupMatmul(torch.autograd.Function):
    """block (G, P, H) @ weight (G, O, H)^T + bias (G, O) -> (G, P, O), with a backward that computes each
    gradient in its own tensor's layout (autograd's would give the weight's as a transposed view, copied into
    place every step)."""

    @staticmethod
    def forward(ctx, block, weight, bias):
        ctx.save_for_backward(block, weight)
        return torch.baddbmm(bias.unsqueeze(1), block, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        block, weight = ctx.saved_tensors
        grad_block = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None   # (G, P, O) @ (G, O, H)
        grad_weight = torch.bmm(grad.transpose(1, 2), block)                         # (G, O, P) @ (G, P, H)
        return grad_block, grad_weight, grad.sum(1)
