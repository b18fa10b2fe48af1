"""numba kernels of `dae.heads.grouped`: one level of the tree for rows sorted by child group, `starts` (2N + 1,)
over the 2N child groups of N nodes (node j's children are groups 2j and 2j + 1, its rows starts[2j]:starts[2j+2]),
in parallel over nodes. Each streams a node's weights once while the node's few rows stay in the cache. Compiled
on first use and cached beside this file (numba's cache): later processes load them in a fraction of a second."""
from __future__ import annotations

import numba
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
    """logits[r, t] = clf_b[j, t] + clf_w[j, t] . h[r] for node j's rows; out[r, o] = bias[k, o] + weight[k, o] . h[r]
    for child group k's rows."""
    n_nodes, n_classes, n_in = clf_w.shape
    n_out = weight.shape[1]
    for j in prange(n_nodes):
        for t in range(n_classes):
            w = clf_w[j, t]
            for r in range(starts[2 * j], starts[2 * j + 2]):
                x = h[r]
                acc = clf_b[j, t]
                for i in range(n_in):
                    acc += w[i] * x[i]
                logits[r, t] = acc
        for k in range(2 * j, 2 * j + 2):
            for o in range(n_out):
                w = weight[k, o]
                for r in range(starts[k], starts[k + 1]):
                    x = h[r]
                    acc = bias[k, o]
                    for i in range(n_in):
                        acc += w[i] * x[i]
                    out[r, o] = acc


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def weight_grad(h, grad_logits, grad_out, starts, grad_clf_w, grad_clf_b, grad_weight, grad_bias):
    """The weights' gradients: sums over each node's (child group's) rows of grad x h; zero without rows."""
    n_nodes, n_classes, n_in = grad_clf_w.shape
    n_out = grad_weight.shape[1]
    for j in prange(n_nodes):
        for t in range(n_classes):
            _accumulate(h, grad_logits, t, starts[2 * j], starts[2 * j + 2], grad_clf_w[j, t], grad_clf_b, j)
        for k in range(2 * j, 2 * j + 2):
            for o in range(n_out):
                _accumulate(h, grad_out, o, starts[k], starts[k + 1], grad_weight[k, o], grad_bias, k)


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _accumulate(h, grad, col, lo, hi, row, grad_bias, k):
    """row = sum over rows lo:hi of grad[r, col] h[r]; grad_bias[k, col] = sum of grad[r, col]."""
    for i in range(row.shape[0]):
        row[i] = 0.0
    total = 0.0
    r = lo
    while r + 2 <= hi:
        g0, g1 = grad[r, col], grad[r + 1, col]
        x0, x1 = h[r], h[r + 1]
        for i in range(row.shape[0]):
            row[i] += g0 * x0[i] + g1 * x1[i]
        total += g0 + g1
        r += 2
    if r < hi:
        g0 = grad[r, col]
        x0 = h[r]
        for i in range(row.shape[0]):
            row[i] += g0 * x0[i]
        total += g0
    grad_bias[k, col] = total


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def input_grad(clf_w, weight, grad_logits, grad_out, starts, grad_h):
    """grad_h[r] = weight[k]^T grad_out[r] + clf_w[j]^T grad_logits[r], four weight rows per pass over grad_h[r]."""
    n_nodes, n_classes, n_in = clf_w.shape
    n_out = weight.shape[1]
    for j in prange(n_nodes):
        for k in range(2 * j, 2 * j + 2):
            lo, hi = starts[k], starts[k + 1]
            for r in range(lo, hi):
                d = grad_h[r]
                for i in range(n_in):
                    d[i] = 0.0
            o = 0
            while o + 4 <= n_out:
                w0, w1, w2, w3 = weight[k, o], weight[k, o + 1], weight[k, o + 2], weight[k, o + 3]
                for r in range(lo, hi):
                    g0, g1, g2, g3 = grad_out[r, o], grad_out[r, o + 1], grad_out[r, o + 2], grad_out[r, o + 3]
                    d = grad_h[r]
                    for i in range(n_in):
                        d[i] += g0 * w0[i] + g1 * w1[i] + g2 * w2[i] + g3 * w3[i]
                o += 4
            while o < n_out:
                w0 = weight[k, o]
                for r in range(lo, hi):
                    g0 = grad_out[r, o]
                    d = grad_h[r]
                    for i in range(n_in):
                        d[i] += g0 * w0[i]
                o += 1
        for t in range(n_classes):
            w = clf_w[j, t]
            for r in range(starts[2 * j], starts[2 * j + 2]):
                g = grad_logits[r, t]
                d = grad_h[r]
                for i in range(n_in):
                    d[i] += g * w[i]
