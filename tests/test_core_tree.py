"""CoRe's pieces on their own: exemplar pools and rules, the leaves' intervals, the stacked tree, its loss."""
import numpy as np
import pytest
import torch

from dae.errors import UsageError
from dae.heads.contrastive.models import voter_mixture
from dae.heads.contrastive.tree import StackedTree, leaf_edges, leaf_targets, relative_from_leaf, tree_loss, tree_relative
from dae.heads.contrastive.exemplars import ExemplarPools, draw_each


def mtl_shaped_difficulty(n=120, seed=0):
    """DDs like MTL-AQA's (a few common values, some rare), plus one DD held by a single video (3.5) and,
    beside it, 3.3 and 3.7 at equal distance; row 0 has the lone DD."""
    rng = np.random.default_rng(seed)
    dd = rng.choice([2.0, 2.4, 2.8, 3.0, 3.3, 3.7], size=n, p=[0.3, 0.2, 0.2, 0.2, 0.05, 0.05])
    dd[0] = 3.5
    dd[1], dd[2] = 3.3, 3.7
    return dd


def test_same_difficulty_every_training_exemplar_shares_the_query_dd_and_is_never_itself():
    dd = mtl_shaped_difficulty()
    train = np.arange(100)
    pools = ExemplarPools(train, len(dd), "same-difficulty", dd)
    gen = torch.Generator().manual_seed(0)
    queries = torch.as_tensor(np.repeat(train[1:], 50))
    ex = pools.draw(queries, gen)
    assert (ex != queries).all()
    assert np.array_equal(dd[ex.numpy()], dd[queries.numpy()])
    assert set(ex.numpy()) <= set(train)
    # every other same-DD training video is drawn for a query (uniform over the pool, not a fixed one)
    q = 5
    drawn = set(pools.draw(torch.full((2000,), q), gen).numpy())
    assert drawn == set(train[(dd[train] == dd[q]) & (train != q)])


def test_lone_difficulty_falls_back_to_the_nearest_dd_lower_on_a_tie():
    dd = mtl_shaped_difficulty()
    train = np.arange(100)
    pools = ExemplarPools(train, len(dd), "same-difficulty", dd)
    # row 0 is the only training video with DD 3.5; 3.3 and 3.7 are equally near: the lower one
    assert np.all(dd[pools.pool(0)] == 3.3)
    ex = pools.draw(torch.zeros(500, dtype=torch.int64), torch.Generator().manual_seed(1))
    assert np.all(dd[ex.numpy()] == 3.3)
    # a test video whose DD no training video has: the nearest DD present
    dd2 = dd.copy()
    dd2[110] = 2.1
    pools2 = ExemplarPools(train, len(dd2), "same-difficulty", dd2)
    assert np.all(dd2[pools2.pool(110)] == 2.0)
    # a test video with DD 3.5 compares with the lone training video (its pool is not empty)
    dd3 = dd.copy()
    dd3[105] = 3.5
    assert list(ExemplarPools(train, len(dd3), "same-difficulty", dd3).pool(105)) == [0]


def test_voters_are_distinct_same_dd_never_the_query_and_fewer_when_the_pool_is_small():
    dd = mtl_shaped_difficulty()
    train = np.arange(100)
    pools = ExemplarPools(train, len(dd), "same-difficulty", dd)
    queries = torch.arange(100, 120)
    ex, valid = pools.voters(queries, 10, torch.Generator().manual_seed(0))
    for q, e, ok in zip(queries.numpy(), ex.numpy(), valid.numpy()):
        chosen = e[ok]
        assert len(set(chosen)) == len(chosen) == min(10, len(pools.pool(q)))
        assert np.all(dd[chosen] == dd[pools.pool(q)[0]])
    # training rows as queries: never themselves
    ex, valid = pools.voters(torch.arange(0, 100), 20, torch.Generator().manual_seed(0))
    assert not (ex == torch.arange(0, 100).unsqueeze(1))[valid].any()
    # the same generator seed gives the same voters
    again, _ = pools.voters(torch.arange(0, 100), 20, torch.Generator().manual_seed(0))
    assert torch.equal(ex, again)


def test_any_rule_draws_every_other_training_video():
    pools = ExemplarPools(np.arange(0, 40, 2), 40, "any")
    ex = pools.draw(torch.full((4000,), 6), torch.Generator().manual_seed(0))
    assert set(ex.numpy()) == set(range(0, 40, 2)) - {6}
    with pytest.raises(UsageError, match="difficulty"):
        ExemplarPools(np.arange(10), 10, "same-difficulty", None)


def test_drawing_for_all_models_at_once_gives_each_models_own_draws():
    """draw_each (one pass when the models share a pool) gives every model the exemplars its own generator gives
    drawing alone, for a shared pool and for distinct ones (cross-validation folds)."""
    dd = mtl_shaped_difficulty()
    shared = ExemplarPools(np.arange(100), 120, "same-difficulty", dd)
    other = ExemplarPools(np.arange(20, 120), 120, "same-difficulty", dd)
    rows = torch.stack([torch.randperm(100, generator=torch.Generator().manual_seed(s))[:32] for s in range(3)])
    for pools in ([shared, shared, shared], [shared, other, shared]):
        alone = [pool.draw(r, torch.Generator().manual_seed(7 + s)) for s, (pool, r) in enumerate(zip(pools, rows))]
        together = draw_each(pools, rows, [torch.Generator().manual_seed(7 + s) for s in range(3)])
        assert torch.equal(together, torch.stack(alone))
        assert not torch.equal(together[0], together[2])  # each model its own stream


def test_within_pool_pairs_are_coress_group_source():
    dd = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    c = np.array([0.1, 0.4, 0.9, 0.2, 0.25, 0.7])
    pools = ExemplarPools(np.arange(6), 6, "same-difficulty", dd)
    assert sorted(pools.within_pool_pairs(c).round(6)) == sorted([0.3, 0.8, 0.5, 0.05])
    assert len(ExemplarPools(np.arange(6), 6, "any").within_pool_pairs(c)) == 15


def test_leaf_edges_are_equal_frequency_bins_mirrored():
    rng = np.random.default_rng(0)
    d = np.abs(rng.normal(0, 0.2, 5000))
    edges = leaf_edges(d, theta=1.0)
    assert edges.shape == (16, 2)
    assert edges[8, 0] == 0.0 and edges[15, 1] == 1.0
    assert np.allclose(edges[:8], -edges[8:][::-1, ::-1])
    counts = [np.sum((d >= lo) & (d < hi)) for lo, hi in edges[8:]]
    assert max(counts) - min(counts) <= 2


def test_leaf_targets_round_trip_and_coress_boundaries():
    rng = np.random.default_rng(1)
    edges = torch.as_tensor(leaf_edges(np.abs(rng.normal(0, 0.2, 1000)), 1.0), dtype=torch.float32).unsqueeze(0)
    delta = torch.as_tensor(rng.uniform(-0.99, 0.99, (1, 500)), dtype=torch.float32)
    leaf, pos = leaf_targets(delta, edges)
    assert ((pos >= 0) & (pos < 1)).all()
    assert torch.allclose(relative_from_leaf(leaf, pos, edges), delta, atol=1e-6)
    assert ((delta >= 0) == (leaf >= 8)).all()
    zero, _ = leaf_targets(torch.zeros(1, 1), edges)
    assert int(zero) == 8
    # CoRe's rule (left <= d < right for d >= 0, left < d <= right for d < 0) mirrors exactly: a boundary value
    # belongs to the outer of its two leaves on both sides
    b = edges[0, 9, 0].item()
    leaf_b, _ = leaf_targets(torch.tensor([[b, -b]]), edges)
    assert leaf_b.tolist() == [[9, 6]]
    far, _ = leaf_targets(torch.tensor([[1.5, -1.5]]), edges)
    assert far.tolist() == [[15, 0]]


def test_path_forward_equals_the_full_tree_and_gradients_agree():
    torch.manual_seed(0)
    tree = StackedTree([0, 1, 2], in_dim=9, hidden=16)
    pairs = torch.randn(3, 40, 9)
    leaf = torch.randint(0, 16, (3, 40))
    logp_full, pos_full = tree.forward_full(pairs)
    assert torch.allclose(logp_full.exp().sum(1), torch.ones(3, 40), atol=1e-5)
    logp_path, pos_path = tree.forward_path(pairs, leaf)
    assert torch.allclose(logp_path, logp_full.gather(1, leaf.unsqueeze(1)).squeeze(1), atol=1e-5)
    assert torch.allclose(pos_path, pos_full.gather(1, leaf.unsqueeze(1)).squeeze(1), atol=1e-5)
    target = torch.rand(3, 40)
    grads = []
    for path in (True, False):
        tree.zero_grad()
        if path:
            lp, ps = tree.forward_path(pairs, leaf)
        else:
            full_lp, full_ps = tree.forward_full(pairs)
            lp, ps = full_lp.gather(1, leaf.unsqueeze(1)).squeeze(1), full_ps.gather(1, leaf.unsqueeze(1)).squeeze(1)
        tree_loss(lp, ps, leaf, target).sum().backward()
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in tree.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_trunk_equals_torchs_linear_and_relu_in_values_and_every_gradient():
    """The trunk's own autograd function (ReLU inside, the score's column apart) against nn.functional.linear and
    relu on the same weights: outputs (about half of them cut by the ReLU) and the gradients of all three weights."""
    torch.manual_seed(3)
    tree = StackedTree([0, 1], in_dim=9, hidden=16)
    pairs = torch.randn(2, 30, 9)
    upstream = torch.randn(2, 16, 30)
    out = tree.trunk(pairs)                                                       # (M, H, n)
    (out * upstream).sum().backward()
    weight = torch.cat([tree.trunk_w, tree.trunk_s], -1).detach().requires_grad_()
    bias = tree.trunk_b.detach().squeeze(-1).requires_grad_()
    ref = torch.stack([torch.relu(torch.nn.functional.linear(pairs[k], weight[k], bias[k])) for k in range(2)])
    (ref.transpose(1, 2) * upstream).sum().backward()
    assert 0.3 < float((ref == 0).float().mean()) < 0.7
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)
    assert torch.allclose(tree.trunk_w.grad, weight.grad[..., :-1], atol=1e-4)
    assert torch.allclose(tree.trunk_s.grad, weight.grad[..., -1:], atol=1e-4)
    assert torch.allclose(tree.trunk_b.grad.squeeze(-1), bias.grad, atol=1e-4)


def test_models_are_independent_and_seeded():
    a = StackedTree([3, 4], in_dim=5, hidden=8)
    b = StackedTree([4], in_dim=5, hidden=8)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa[1], pb[0]), name
    state = a.model_state(1)
    c = StackedTree([9], in_dim=5, hidden=8)
    c.load_model_states([state])
    x = torch.randn(1, 7, 5)
    assert torch.allclose(c.forward_full(x)[0], b.forward_full(x)[0])


def test_tree_loss_is_coress_formula():
    rng = np.random.default_rng(2)
    m, b, leaves = 2, 6, 16
    logp = torch.as_tensor(rng.normal(-2, 1, (m, 2 * b)))
    pos = torch.as_tensor(rng.uniform(0, 1, (m, 2 * b)))
    target = torch.as_tensor(rng.uniform(0, 1, (m, 2 * b)))
    leaf = torch.as_tensor(rng.integers(0, 4, (m, 2 * b)))  # few leaves: several rows share one
    got = tree_loss(logp, pos, leaf, target, leaves)
    for k in range(m):
        expect = 0.0
        for half in (slice(0, b), slice(b, 2 * b)):
            expect += -logp[k, half].mean()
            for j in range(leaves):
                mask = leaf[k, half] == j
                if mask.any():
                    expect += ((pos[k, half][mask] - target[k, half][mask]) ** 2).mean()
        assert float(got[k]) == pytest.approx(float(expect), rel=1e-9)


def test_prediction_is_the_argmax_leafs_interval_position():
    tree = StackedTree([0], in_dim=3, hidden=4)
    edges = torch.as_tensor(leaf_edges(np.linspace(0, 1, 100), 1.0), dtype=torch.float32).unsqueeze(0)
    pairs = torch.randn(1, 5, 3)
    logp, pos = tree.forward_full(pairs)
    leaf = logp.argmax(1)
    left, right = edges[0, leaf[0], 0], edges[0, leaf[0], 1]
    expect = left + (right - left) * pos[0].gather(0, leaf[0].unsqueeze(0)).squeeze(0)
    assert torch.allclose(tree_relative(tree, pairs, edges)[0], expect)


def test_voter_mixture_moments():
    means = torch.tensor([[[0.2, 0.4, 9.0]]])
    scales = torch.tensor([[[0.1, 0.3, 9.0]]])
    valid = torch.tensor([[[True, True, False]]])
    mu, spread = voter_mixture(means, scales, valid)
    assert float(mu) == pytest.approx(0.3)
    assert float(spread) ** 2 == pytest.approx((0.01 + 0.09) / 2 + 0.01)


def test_argmax_forward_equals_the_full_trees_argmax_leaf():
    tree = StackedTree([5, 6], in_dim=7, hidden=16)
    pairs = torch.randn(2, 50, 7)
    logp, pos = tree.forward_full(pairs)
    leaf, position = tree.forward_argmax(pairs)
    assert torch.equal(leaf, logp.argmax(1))
    assert torch.allclose(position, pos.gather(1, leaf.unsqueeze(1)).squeeze(1), atol=1e-5)


def test_a_tree_level_on_the_kernels_equals_the_padded_matmul_and_gives_empty_nodes_zero_gradients():
    """The CPU kernels (numba) and the padded batched matmul (other devices) are one level of the tree: the same
    logits, outputs and gradients; a child group without rows gets a zero weight gradient, not stale memory."""
    from dae.heads.contrastive.tree_rows import tree_level

    gen = torch.Generator().manual_seed(0)
    nodes, hidden = 6, 12
    counts = torch.tensor([3, 0, 5, 1, 0, 0, 2, 7, 1, 1, 4, 0])          # node 2 (groups 4, 5) has no rows
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    rows = int(counts.sum())
    base = [torch.randn(rows, hidden, generator=gen), torch.randn(nodes, 2, hidden, generator=gen),
            torch.randn(nodes, 2, generator=gen), torch.randn(2 * nodes, hidden, hidden, generator=gen),
            torch.randn(2 * nodes, hidden, generator=gen)]
    grad_logits, grad_out = torch.randn(rows, 2, generator=gen), torch.randn(rows, hidden, generator=gen)
    results = []
    for padded in (False, True):
        inputs = [t.clone().requires_grad_() for t in base]
        logits, out = tree_level(*inputs, starts, padded=padded)
        torch.autograd.backward([logits, out], [grad_logits, grad_out])
        results.append([logits.detach(), out.detach()] + [t.grad for t in inputs])
    for kernel, padded in zip(*results):
        assert torch.allclose(kernel, padded, atol=1e-4), (kernel - padded).abs().max()
    grad_weight, grad_clf_w = results[0][5], results[0][3]
    assert torch.count_nonzero(grad_weight[[1, 4, 5, 11]]) == 0 and torch.count_nonzero(grad_clf_w[2]) == 0
    assert torch.count_nonzero(grad_weight[[0, 2, 3, 6, 7, 8, 9, 10]].flatten(1), dim=1).min() > 0


def test_a_tree_path_on_the_kernels_equals_torchs_levels_in_values_and_every_gradient():
    """`tree_path` on the CPU kernels (the ReLUs and log-softmaxes inside them) and as torch's operations around the
    padded levels: the same path log probabilities, last hidden states and gradients, for rows of three models
    sorted by leaf with some leaves (and a whole subtree) without rows; a child without rows gets a zero weight
    gradient."""
    from dae.heads.contrastive.tree_rows import tree_path

    gen = torch.Generator().manual_seed(3)
    models, hidden, levels = 3, 12, 4
    leaves = 2 ** levels
    leaf = torch.randint(0, leaves, (models, 30), generator=gen)
    leaf[0] = torch.where(leaf[0] >= 8, leaf[0] - 8, leaf[0])          # model 0: the root's right subtree is empty
    leaf = torch.sort(leaf, dim=1).values
    flat = (leaf + leaves * torch.arange(models).unsqueeze(1)).reshape(-1)
    nodes = [models * 2 ** d for d in range(levels)]
    base = [torch.randn(flat.shape[0], hidden, generator=gen)]
    for n in nodes:
        base += [torch.randn(n, 2, hidden, generator=gen) * 0.3, torch.randn(n, 2, generator=gen),
                 torch.randn(2 * n, hidden, hidden, generator=gen) * 0.3, torch.randn(2 * n, hidden, generator=gen)]
    grad_logp, grad_h = torch.randn(flat.shape[0], generator=gen), torch.randn(flat.shape[0], hidden, generator=gen)
    results = []
    for padded in (False, True):
        inputs = [t.clone().requires_grad_() for t in base]
        params = inputs[1:]
        logp, h = tree_path(inputs[0], flat, params[0::4], params[1::4], params[2::4], params[3::4], padded=padded)
        torch.autograd.backward([logp, h], [grad_logp, grad_h])
        results.append([logp.detach(), h.detach()] + [t.grad for t in inputs])
    assert (results[0][1] >= 0).all() and (results[0][1] == 0).any()      # after the ReLU, some units off
    for kernel, padded in zip(*results):
        assert torch.allclose(kernel, padded, atol=1e-4), (kernel - padded).abs().max()
    last_weight_grad = results[0][3 + 4 * (levels - 1) + 2]               # (2 N, I, I) of the last level
    empty = [g for g in range(2 * nodes[-1]) if not (flat == g).any()]    # a last-level child group is one leaf
    assert empty and torch.count_nonzero(last_weight_grad[empty]) == 0


def test_warm_up_readies_every_kernel_a_fit_runs():
    """`dae bench fit --head core` times fits after `warm_up`: it must have compiled (or loaded) every kernel a
    training step and the voting use, so that none compiles inside the timing. In a fresh interpreter (in this one
    other tests may have run the kernels already)."""
    pytest.importorskip("numba", reason="the kernels need numba (a dependency; the padded path runs without it)")
    import subprocess
    import sys

    code = ("from dae.heads.contrastive import tree_kernels as k; from dae.heads.contrastive.tree_rows import warm_up; warm_up(); "
            "print(*[n for n in ('forward', 'path_forward', 'path_grads', 'weight_grad', 'input_grad') "
            "if not getattr(k, n).signatures])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"not compiled by warm_up: {done.stdout}"


def test_a_state_saved_with_the_score_column_inside_the_trunk_weight_still_loads():
    """Runs saved before the exemplar score's trunk column had a parameter of its own hold it as trunk_w's last
    column: loading such a state gives the same tree."""
    a = StackedTree([7], in_dim=9, hidden=8)
    state = a.model_state(0)
    old = {k: v for k, v in state.items() if k != "trunk_s"}
    old["trunk_w"] = torch.cat([state["trunk_w"], state["trunk_s"]], dim=-1)
    assert old["trunk_w"].shape == (8, 9)
    b = StackedTree([8], in_dim=9, hidden=8)
    b.load_model_states([old])
    x = torch.randn(1, 6, 9)
    for got, want in zip(b.forward_full(x), a.forward_full(x)):
        assert torch.equal(got, want)
