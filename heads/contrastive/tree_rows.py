"""CoRe's tree for rows that each follow one path: one level (`tree_level`: node j's 2-way classifier and the layer
of the path's child k, out[r] = weight[k] @ h[r] + bias[k] and logits[r] = clf_w[j] @ h[r] + clf_b[j]) or a
training step's whole path through the levels (`tree_path`).

CoRe's tree sends each pair down one path, so at every level a row meets one node out of many, and a training
batch has only a few rows per node: the cost is reading each node's weights, not the arithmetic. The rows come
sorted by child group (the tree's rows sorted by leaf are), with `starts` (2N + 1,) marking where each of the 2N
child groups begins (node j's children are groups 2j and 2j + 1; a group may have no rows).

On the CPU (layer widths a multiple of 4) three numba kernels (forward, the weights' gradients, the input's
gradient) read each child's weights once, in parallel over child groups; a node or child without rows gets a zero
gradient. Doing the classifier in the same pass saves the small per-level operations that otherwise cost as much
as the layer. `tree_path` runs all levels of a training step this way in one autograd function, with the ReLUs and
the path's log-softmaxes inside the kernels: no torch operations between levels (10% less time for the tree's
forward and backward, measured in one process against the levels as separate operations). Elsewhere (CUDA, other
widths, or without numba) a level is a zero-padded batched matmul (one block of the largest group's height per
child group) and a gathered classifier: on a CPU 2.5x slower at the tree's last level (80 groups of 256 x 256, 4
rows each on average). Both give the same values and gradients up to float rounding (tested).
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
    if not padded and clf_w.shape[1] == 2 and _kernel_ready(h, weight):
        return _KernelLevel.apply(h, clf_w, clf_b, weight, bias, starts)
    starts = starts.to(h.device)
    counts = starts[1:] - starts[:-1]
    child = torch.repeat_interleave(torch.arange(weight.shape[0], device=h.device), counts)
    node = child >> 1
    logits = torch.einsum("ri,rti->rt", h, clf_w[node]) + clf_b[node]
    return logits, _padded(h, weight, bias, starts, child, counts)


def tree_path(h: torch.Tensor, flat_leaf: torch.Tensor, clf_w, clf_b, weight, bias, padded: bool = False):
    """All levels of a tree for rows that each follow one path (to their leaf): h (R, I) the rows' input to the
    first level, sorted by flat_leaf (R,) (model x leaves + leaf, ascending); per level d the lists' entries clf_w[d]
    (N_d, 2, I), clf_b[d] (N_d, 2), weight[d] (2N_d, I, I), bias[d] (2N_d, I) of N_d nodes (models x 2^d; any leading
    shape that flattens to these, such as (models, 2^d, 2, I), is taken as it is and its gradient given in it) ->
    (logp (R,): the sum over levels of the path child's binary log-softmax, h (R, I): the last level's output after
    its ReLU).

    On the CPU one autograd function runs the levels on the kernels, the ReLUs and log-softmaxes inside them;
    elsewhere (or padded) `tree_level` per level and torch's own operations. The same values and gradients (tested)."""
    levels = len(weight)
    shifts = [levels - 1 - d for d in range(levels)]
    flat = flat_leaf.reshape(-1)
    starts = [group_starts(flat >> s, weight[d].shape[:-2].numel()) for d, s in enumerate(shifts)]
    if not padded and _kernel_ready(h, weight[0]):
        params = [t for d in range(levels) for t in (clf_w[d], clf_b[d], weight[d], bias[d])]
        return _KernelPath.apply(h, starts, *params)
    logp = h.new_zeros(h.shape[0])
    for d, s in enumerate(shifts):
        width = weight[d].shape[-1]
        logits, out = tree_level(h, clf_w[d].reshape(-1, 2, width), clf_b[d].reshape(-1, 2),
                                 weight[d].reshape(-1, weight[d].shape[-2], width),
                                 bias[d].reshape(-1, weight[d].shape[-2]), starts[d], padded=True)
        child = ((flat >> s) & 1).unsqueeze(1)
        logp = logp + torch.log_softmax(logits, dim=1).gather(1, child).squeeze(1)
        h = torch.relu(out)
    return logp, h


def group_starts(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Where each of n_groups groups begins in a sorted vector of group ids, and its end: (n_groups + 1,) int64 on
    the CPU."""
    bounds = torch.arange(n_groups + 1, device=groups.device)
    return torch.searchsorted(groups, bounds).cpu()


def _kernel_ready(h: torch.Tensor, weight: torch.Tensor) -> bool:
    return (h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64) and weight.shape[-2] % 4 == 0
            and _kernels() is not None)


def warm_up() -> float:
    """Compile the kernels (or load them from numba's cache) on a tiny tree path and level; the seconds it took (0.0
    where the kernels are not used). The first CoRe fit after installing compiles them once (several seconds)."""
    start = time.perf_counter()
    if not _kernels():
        return 0.0
    h = torch.zeros(4, 4, requires_grad=True)
    weight = torch.zeros(2, 4, 4, requires_grad=True)
    logp, out = tree_path(h, torch.tensor([0, 0, 1, 1]), [torch.zeros(1, 2, 4)], [torch.zeros(1, 2)], [weight],
                          [torch.zeros(2, 4)])
    (logp.sum() + out.sum()).backward()
    with torch.no_grad():
        tree_level(h, torch.zeros(1, 2, 4), torch.zeros(1, 2), weight, torch.zeros(2, 4), torch.tensor([0, 2, 4]))
    return time.perf_counter() - start


def _kernels():
    """The compiled kernels, or None (numba missing: then the padded path, with one warning)."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from dae.heads.contrastive import tree_kernels as grouped_kernels
        except ImportError as exc:
            warnings.warn(f"numba is not available ({exc}); CoRe's tree runs a slower padded matmul on the CPU",
                          RuntimeWarning, stacklevel=3)
            _KERNELS = False
        else:
            _KERNELS = grouped_kernels
    return _KERNELS or None


def _numpy(t: torch.Tensor, *shape):
    """t's data as a numpy array (a view where t is contiguous), reshaped to shape where given."""
    a = t.detach().contiguous().numpy()
    return a.reshape(shape) if shape else a


def _level_arrays(clf_w, clf_b, weight, bias):
    """A level's weights as the kernels' arrays: (N, 2, I), (N, 2), (2N, O, I), (2N, O)."""
    out, width = weight.shape[-2], weight.shape[-1]
    return (_numpy(clf_w, -1, 2, width), _numpy(clf_b, -1, 2), _numpy(weight, -1, out, width),
            _numpy(bias, -1, out))


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
            k.forward(_numpy(h), *_level_arrays(clf_w, clf_b, weight, bias), starts.numpy(), logits.numpy(),
                      out.numpy())
        ctx.save_for_backward(h, clf_w, weight, starts)
        ctx.bias_shapes = [clf_b.shape, bias.shape]
        return logits, out

    @staticmethod
    def backward(ctx, grad_logits, grad_out):
        k = _kernels()
        h, clf_w, weight, starts = ctx.saved_tensors
        with _LAUNCH:
            grad_h, *grads = _level_grads(k, h, clf_w, weight, *ctx.bias_shapes, grad_logits, grad_out, starts,
                                          ctx.needs_input_grad[0])
        return (grad_h, *grads, None)


def _level_grads(k, h, clf_w, weight, clf_b_shape, bias_shape, grad_logits, grad_out, starts, with_input: bool):
    """One level's gradients on the kernels (the caller holds `_LAUNCH`), each in its parameter's shape: (the
    input's or None, clf_w's, clf_b's, weight's, bias's)."""
    gl, go = _numpy(grad_logits), _numpy(grad_out)
    grad_clf_w, grad_weight = torch.empty_like(clf_w), torch.empty_like(weight)
    grad_clf_b, grad_bias = clf_w.new_empty(clf_b_shape), weight.new_empty(bias_shape)
    arrays = _level_arrays(grad_clf_w, grad_clf_b, grad_weight, grad_bias)
    k.weight_grad(_numpy(h), gl, go, starts.numpy(), *arrays)
    grad_h = None
    if with_input:
        grad_h = torch.empty_like(h)
        out, width = weight.shape[-2], weight.shape[-1]
        k.input_grad(_numpy(clf_w, -1, 2, width), _numpy(weight, -1, out, width), gl, go, starts.numpy(),
                     grad_h.numpy())
    return grad_h, grad_clf_w, grad_clf_b, grad_weight, grad_bias


class _KernelPath(torch.autograd.Function):
    """`tree_path` on the kernels: each level one kernel call forward (its ReLU and log-softmax inside), three
    backward (the level's incoming gradients, its weights' gradients, its input's gradient)."""

    @staticmethod
    def forward(ctx, h, starts, *params):
        k = _kernels()
        k.use_threads(torch.get_num_threads())
        levels = len(params) // 4
        starts = [s.to(torch.int64).contiguous() for s in starts]
        params = [p.contiguous() for p in params]
        hs, logits = [h.contiguous()], []
        logp = h.new_zeros(h.shape[0])
        with _LAUNCH:
            for d in range(levels):
                clf_w, clf_b, weight, bias = params[4 * d:4 * d + 4]
                logits.append(h.new_empty(h.shape[0], 2))
                hs.append(h.new_empty(h.shape[0], weight.shape[-2]))
                k.path_forward(_numpy(hs[d]), *_level_arrays(clf_w, clf_b, weight, bias), starts[d].numpy(),
                               logits[d].numpy(), hs[d + 1].numpy(), logp.numpy())
        ctx.save_for_backward(*hs, *logits, *params[0::4], *params[2::4], *starts)
        ctx.bias_shapes = [(params[4 * d + 1].shape, params[4 * d + 3].shape) for d in range(levels)]
        ctx.levels = levels
        return logp, hs[-1]

    @staticmethod
    def backward(ctx, grad_logp, grad_h):
        k = _kernels()
        levels = ctx.levels
        saved = ctx.saved_tensors
        hs, logits = saved[:levels + 1], saved[levels + 1:2 * levels + 1]
        clf_ws, weights = saved[2 * levels + 1:3 * levels + 1], saved[3 * levels + 1:4 * levels + 1]
        starts = saved[4 * levels + 1:]
        rows = hs[0].shape[0]
        grad_logp = hs[0].new_zeros(rows) if grad_logp is None else grad_logp.contiguous()
        grad = hs[0].new_zeros(hs[-1].shape) if grad_h is None else grad_h.clone(memory_format=torch.contiguous_format)
        grads = [None] * (4 * levels)
        with _LAUNCH:
            for d in reversed(range(levels)):
                clf_w, weight = clf_ws[d], weights[d]
                grad_logits = hs[0].new_empty(rows, 2)
                k.path_grads(_numpy(hs[d + 1]), _numpy(logits[d]), _numpy(grad_logp), starts[d].numpy(), grad.numpy(),
                             grad_logits.numpy())
                below, *grads[4 * d:4 * d + 4] = _level_grads(k, hs[d], clf_w, weight, *ctx.bias_shapes[d],
                                                               grad_logits, grad, starts[d],
                                                               d > 0 or ctx.needs_input_grad[0])
                grad = below
        return (grad, None, *grads)


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
