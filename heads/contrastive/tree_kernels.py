"""numba kernels of `dae.heads.contrastive.tree_rows`: one level of the tree for rows sorted by child group, `starts` (2N + 1,)
over the 2N child groups of N nodes (node j's children are groups 2j and 2j + 1, its rows starts[2j]:starts[2j+2]),
in parallel over child groups. Each streams a node's weights once while the node's few rows stay in the cache, and works
on two weight rows and up to four data rows at a time (fewer loads per multiply-add). Layer widths must be
multiples of 4. Compiled on first use and cached beside this file (numba's cache): later processes load them in a
fraction of a second."""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_threads = [0]


def use_threads(n: int) -> None:
    """Run the kernels on n threads (the caller's torch thread count)."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if n != _threads[0]:
        numba.set_num_threads(n)
        _threads[0] = n


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def forward(h, clf_w, clf_b, weight, bias, starts, logits, out):
    """logits[r] = clf_w[j] @ h[r] + clf_b[j] for node j's rows; out[r] = weight[k] @ h[r] + bias[k] for child
    group k's rows."""
    for k in prange(weight.shape[0]):
        _forward_group(h, clf_w, clf_b, weight, bias, starts, logits, out, k)


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def path_forward(h, clf_w, clf_b, weight, bias, starts, logits, out, logp):
    """`forward`, then for every row of child group k (child k & 1 of its node): logp[r] += that child's
    log-softmax, and out[r] = relu(out[r])."""
    for k in prange(weight.shape[0]):
        _forward_group(h, clf_w, clf_b, weight, bias, starts, logits, out, k)
        bit = k & 1
        for r in range(starts[k], starts[k + 1]):
            a, b = logits[r, 0], logits[r, 1]
            top = max(a, b)
            logp[r] += logits[r, bit] - top - np.log(np.exp(a - top) + np.exp(b - top))
            row = out[r]
            for i in range(row.shape[0]):
                row[i] = max(row[i], np.float32(0.0))


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _forward_group(h, clf_w, clf_b, weight, bias, starts, logits, out, k):
    lo, hi = starts[k], starts[k + 1]
    j = k >> 1
    _two_outputs(h, clf_w[j, 0], clf_w[j, 1], clf_b[j, 0], clf_b[j, 1], lo, hi, logits, 0)
    for o in range(0, weight.shape[1], 2):
        _two_outputs(h, weight[k, o], weight[k, o + 1], bias[k, o], bias[k, o + 1], lo, hi, out, o)


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _two_outputs(h, w0, w1, b0, b1, lo, hi, out, o):
    """out[r, o] = w0 . h[r] + b0 and out[r, o + 1] = w1 . h[r] + b1 for rows lo:hi, four rows at a time."""
    n_in = w0.shape[0]
    r = lo
    while r + 4 <= hi:
        x0, x1, x2, x3 = h[r], h[r + 1], h[r + 2], h[r + 3]
        a0 = a1 = a2 = a3 = c0 = c1 = c2 = c3 = np.float32(0.0)
        for i in range(n_in):
            u, v = w0[i], w1[i]
            y0, y1, y2, y3 = x0[i], x1[i], x2[i], x3[i]
            a0 += u * y0
            a1 += u * y1
            a2 += u * y2
            a3 += u * y3
            c0 += v * y0
            c1 += v * y1
            c2 += v * y2
            c3 += v * y3
        out[r, o], out[r + 1, o], out[r + 2, o], out[r + 3, o] = a0 + b0, a1 + b0, a2 + b0, a3 + b0
        out[r, o + 1], out[r + 1, o + 1], out[r + 2, o + 1], out[r + 3, o + 1] = c0 + b1, c1 + b1, c2 + b1, c3 + b1
        r += 4
    while r < hi:
        x0 = h[r]
        a0 = c0 = np.float32(0.0)
        for i in range(n_in):
            a0 += w0[i] * x0[i]
            c0 += w1[i] * x0[i]
        out[r, o], out[r, o + 1] = a0 + b0, c0 + b1
        r += 1


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def weight_grad(h, grad_logits, grad_out, starts, grad_clf_w, grad_clf_b, grad_weight, grad_bias):
    """The weights' gradients: sums over each node's (child group's) rows of grad x h; zero without rows."""
    for k in prange(grad_weight.shape[0]):
        if k & 1 == 0:
            j = k >> 1
            _two_sums(h, grad_logits, 0, starts[k], starts[k + 2], grad_clf_w[j, 0], grad_clf_w[j, 1], grad_clf_b, j)
        for o in range(0, grad_weight.shape[1], 2):
            _two_sums(h, grad_out, o, starts[k], starts[k + 1], grad_weight[k, o], grad_weight[k, o + 1],
                      grad_bias, k)


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _two_sums(h, grad, col, lo, hi, row0, row1, grad_bias, k):
    """row0 = sum over rows lo:hi of grad[r, col] h[r], row1 the same for col + 1; their grad sums into
    grad_bias[k, col], grad_bias[k, col + 1]. Four rows at a time."""
    n_in = row0.shape[0]
    for i in range(n_in):
        row0[i] = 0.0
        row1[i] = 0.0
    t0 = t1 = 0.0
    r = lo
    while r + 4 <= hi:
        a0, a1, a2, a3 = grad[r, col], grad[r + 1, col], grad[r + 2, col], grad[r + 3, col]
        b0, b1, b2, b3 = grad[r, col + 1], grad[r + 1, col + 1], grad[r + 2, col + 1], grad[r + 3, col + 1]
        x0, x1, x2, x3 = h[r], h[r + 1], h[r + 2], h[r + 3]
        for i in range(n_in):
            y0, y1, y2, y3 = x0[i], x1[i], x2[i], x3[i]
            row0[i] += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3
            row1[i] += b0 * y0 + b1 * y1 + b2 * y2 + b3 * y3
        t0 += a0 + a1 + a2 + a3
        t1 += b0 + b1 + b2 + b3
        r += 4
    while r < hi:
        a0, b0 = grad[r, col], grad[r, col + 1]
        x0 = h[r]
        for i in range(n_in):
            row0[i] += a0 * x0[i]
            row1[i] += b0 * x0[i]
        t0 += a0
        t1 += b0
        r += 1
    grad_bias[k, col] = t0
    grad_bias[k, col + 1] = t1


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def input_grad(clf_w, weight, grad_logits, grad_out, starts, grad_h):
    """grad_h[r] = weight[k]^T grad_out[r] + clf_w[j]^T grad_logits[r]: two rows and four (the classifier's two)
    weight rows at a time."""
    for k in prange(weight.shape[0]):
        lo, hi = starts[k], starts[k + 1]
        for r in range(lo, hi):
            grad_h[r, :] = 0.0
        _add_two_rows(clf_w[k >> 1, 0], clf_w[k >> 1, 1], grad_logits, 0, lo, hi, grad_h)
        for o in range(0, weight.shape[1], 4):
            _add_four_rows(weight[k, o], weight[k, o + 1], weight[k, o + 2], weight[k, o + 3], grad_out, o, lo, hi,
                           grad_h)


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def path_grads(out, logits, grad_logp, starts, grad_out, grad_logits):
    """The gradients into one level of a path from those of its outputs: grad_out[r] (the gradient of relu(out))
    masked where out[r] (after the relu) is 0, in place; grad_logits[r] = grad_logp[r] (onehot(child) - softmax)."""
    for k in prange(len(starts) - 1):
        bit = k & 1
        for r in range(starts[k], starts[k + 1]):
            a, b = logits[r, 0], logits[r, 1]
            p1 = np.float32(1.0) / (np.float32(1.0) + np.exp(a - b))
            g = grad_logp[r]
            grad_logits[r, 0] = g * (np.float32(1 - bit) - (np.float32(1.0) - p1))
            grad_logits[r, 1] = g * (np.float32(bit) - p1)
            row, grad = out[r], grad_out[r]
            for i in range(row.shape[0]):
                if row[i] <= 0.0:
                    grad[i] = 0.0


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _add_two_rows(w0, w1, grad, col, lo, hi, grad_h):
    """grad_h[r] += grad[r, col] w0 + grad[r, col + 1] w1 for rows lo:hi, two rows at a time."""
    n_in = w0.shape[0]
    r = lo
    while r + 2 <= hi:
        a0, a1, b0, b1 = grad[r, col], grad[r, col + 1], grad[r + 1, col], grad[r + 1, col + 1]
        d0, d1 = grad_h[r], grad_h[r + 1]
        for i in range(n_in):
            u, v = w0[i], w1[i]
            d0[i] += a0 * u + a1 * v
            d1[i] += b0 * u + b1 * v
        r += 2
    if r < hi:
        a0, a1 = grad[r, col], grad[r, col + 1]
        d0 = grad_h[r]
        for i in range(n_in):
            d0[i] += a0 * w0[i] + a1 * w1[i]


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _add_four_rows(w0, w1, w2, w3, grad, col, lo, hi, grad_h):
    """grad_h[r] += sum over q < 4 of grad[r, col + q] w_q for rows lo:hi, two rows at a time."""
    n_in = w0.shape[0]
    r = lo
    while r + 2 <= hi:
        a0, a1, a2, a3 = grad[r, col], grad[r, col + 1], grad[r, col + 2], grad[r, col + 3]
        b0, b1, b2, b3 = grad[r + 1, col], grad[r + 1, col + 1], grad[r + 1, col + 2], grad[r + 1, col + 3]
        d0, d1 = grad_h[r], grad_h[r + 1]
        for i in range(n_in):
            u0, u1, u2, u3 = w0[i], w1[i], w2[i], w3[i]
            d0[i] += a0 * u0 + a1 * u1 + a2 * u2 + a3 * u3
            d1[i] += b0 * u0 + b1 * u1 + b2 * u2 + b3 * u3
        r += 2
    if r < hi:
        a0, a1, a2, a3 = grad[r, col], grad[r, col + 1], grad[r, col + 2], grad[r, col + 3]
        d0 = grad_h[r]
        for i in range(n_in):
            d0[i] += a0 * w0[i] + a1 * w1[i] + a2 * w2[i] + a3 * w3[i]
