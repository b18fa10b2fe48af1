"""The sequence heads' fast paths (issue 24, item 5) against the plain expressions they replace: the masked BatchNorm's
hand-written backward, the one-pass dropout (and ReLU), the fused q/k/v projection, the mask-free path of unpadded
batches and the length-sorted evaluation chunks. Each compares the same inputs, seeds and generators through both
ways: forward values and running statistics bit for bit where the fast path does the same ops, gradients and
evaluation outputs to float32 rounding."""
import math

import numpy as np
import pytest
import torch

from dae.heads.sequence.layers import Dropout, MaskedBatchNorm, StackedAttention, set_dropout_generators
from dae.heads.sequence.models import ClipBank, SequenceOptions, build_model, length_chunks, predict_full

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain_batch_norm(x, mask, weight, bias, eps=1e-5):
    """MaskedBatchNorm's training expression before the fast path (statistics over each model's real clips)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    count = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=(1, 2), keepdim=True) / count
    var = (((x - mean) * m) ** 2).sum(dim=(1, 2), keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias, mean, var * count / (count - 1).clamp_min(1.0)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_masked_batch_norm_equals_the_plain_expression(padded, relu):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 5) * 3 + 1
    mask = torch.ones(2, 3, 7, dtype=torch.bool)
    if padded:
        mask[0, 1, 4:], mask[1, 2, 1:] = False, False
    weight, bias = torch.randn(2, 1, 1, 5), torch.randn(2, 1, 1, 5)
    grad_out = torch.randn(2, 3, 7, 5)

    bn = MaskedBatchNorm(2, 5).train()
    with torch.no_grad():
        bn.weight.copy_(weight), bn.bias.copy_(bias)
    xf = x.clone().requires_grad_()
    # the model passes None for a batch without padding (GDLT's decode); both spellings go through the test
    fast = bn(xf, None if not padded else mask, relu=relu)
    (fast * grad_out).sum().backward()

    xp, wp, bp = x.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()
    plain, mean, unbiased = _plain_batch_norm(xp, mask, wp, bp)
    if relu:
        plain = torch.relu(plain)
    (plain * grad_out).sum().backward()

    assert torch.equal(fast, plain)                                # the same ops in the same order
    assert torch.equal(bn.running_mean, torch.zeros_like(mean).lerp_(mean.detach(), 0.1))
    assert torch.equal(bn.running_var, torch.ones_like(unbiased).lerp_(unbiased.detach(), 0.1))
    torch.testing.assert_close(xf.grad, xp.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.weight.grad, wp.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.bias.grad, bp.grad, rtol=1e-5, atol=1e-6)


def test_masked_batch_norm_eval_is_the_running_affine():
    bn = MaskedBatchNorm(2, 4)
    with torch.no_grad():
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2), bn.weight.normal_(), bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, 3, 6, 4)
    plain = (x - bn.running_mean) * torch.rsqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(bn(x, None), plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn(x, None, relu=True), torch.relu(plain), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("group_size", [1, 2])
def test_dropout_equals_x_times_the_kept_mask_over_1_minus_p(relu, group_size):
    """Stream s's mask is torch.rand(shape, generator=s) >= p, shared by its group's models; values and gradients
    are those of relu(x) * keep / (1 - p) through autograd."""
    p = 0.7
    torch.manual_seed(1)
    x = torch.randn(2 * group_size, 3, 4, 6)
    grad_out = torch.randn_like(x)
    drop = Dropout(p).train()
    drop.generators, drop.group_size = [torch.Generator().manual_seed(s) for s in (3, 4)], group_size
    xf = x.clone().requires_grad_()
    fast = drop(xf, relu=relu)
    (fast * grad_out).sum().backward()

    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    keep = torch.stack([torch.rand(x.shape[1:], generator=g) for g in gens]) >= p
    keep = keep.repeat_interleave(group_size, 0)
    xp = x.clone().requires_grad_()
    plain = (torch.relu(xp) if relu else xp) * keep.to(x.dtype) / (1 - p)
    (plain * grad_out).sum().backward()
    assert torch.equal(fast, plain) and torch.equal(xf.grad, xp.grad)
    drop.eval()
    assert torch.equal(drop(x, relu=relu), torch.relu(x) if relu else x)


def _plain_attention(att, query, memory, key_mask):
    """StackedAttention's forward before the fast path: three projections, scores divided by sqrt(E/h)."""
    m, b, lq, e = query.shape
    lk, h = memory.shape[2], att.heads
    q = att.q(query).view(m * b, lq, h, e // h).transpose(1, 2)
    k = att.k(memory).view(m * b, lk, h, e // h).transpose(1, 2)
    v = att.v(memory).view(m * b, lk, h, e // h).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(e // h)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.reshape(m * b, 1, 1, lk), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if att.dropout.p and att.training:
        weights = att.dropout(weights.view(m, b * h, lq, lk)).view(m * b, h, lq, lk)
    return att.out((weights @ v).transpose(1, 2).reshape(m, b, lq, e))


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("cross", [False, True])
def test_fused_attention_equals_three_projections(heads, cross):
    """Self-attention (q, k, v in one matmul) and cross-attention (k, v in one), with padded keys and attention
    dropout drawn from the same generators: outputs and every parameter's gradient as the plain forward's."""
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    att = StackedAttention(gens, 12, heads, dropout=0.3).train()
    torch.manual_seed(2)
    query = torch.randn(2, 3, 4 if cross else 6, 12)
    memory = torch.randn(2, 3, 6, 12) if cross else query
    mask = torch.ones(2, 3, 6, dtype=torch.bool)
    mask[0, 2, 3:], mask[1, 0, 5:] = False, False
    grad_out = torch.randn(query.shape)
    results = []
    for forward in (att, lambda qq, mm, km: _plain_attention(att, qq, mm, km)):
        att.zero_grad()
        set_dropout_generators(att, [torch.Generator().manual_seed(9)])
        out = forward(query, memory, mask)
        (out * grad_out).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in att.named_parameters()}))
    (fast, fast_grads), (plain, plain_grads) = results
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    # 1/sqrt(12 / h) is no power of two: the folded scale rounds differently; at E/h = 4 the scale 1/2 is exact
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    exact = StackedAttention(gens, 16, 4, dropout=0.0).eval()
    x = torch.randn(2, 3, 5, 16)
    assert torch.equal(exact(x, x, None), _plain_attention(exact, x, x, None))


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("training", [False, True])
def test_self_attention_over_expanded_queries_attends_once_and_equals_the_copied_queries(heads, training):
    """GDLT's grade queries enter the first decoder layer expanded along the batch (stride 0): projected and scored
    once per model, then per video (attention-weight dropout drawn per video, as for a copy of the queries)."""
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    att = StackedAttention(gens, 8, heads, dropout=0.3).train(training)
    queries = torch.randn(2, 4, 8, requires_grad=True)
    grad_out = torch.randn(2, 5, 4, 8)
    results = []
    for expanded in (True, False):
        att.zero_grad()
        queries.grad = None
        set_dropout_generators(att, [torch.Generator().manual_seed(7)])
        q = queries.unsqueeze(1).expand(2, 5, 4, 8)
        q = q if expanded else q.contiguous()
        out = att(q, q)
        assert out.shape == (2, 5, 4, 8)
        (out * grad_out).sum().backward()
        results.append((out.detach(), queries.grad.clone(), att.q.weight.grad.clone(), att.v.weight.grad.clone()))
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_an_unpadded_batch_skips_the_masks_and_gives_the_same_training_step():
    """GDLT's decode drops an all-real mask (no masked work); forcing the masked path gives the same outputs and
    gradients (dropout on, same generators)."""
    options = SequenceOptions(crop=5, hidden=16, heads=2, encoder_layers=1, decoder_layers=2, queries=4, dropout=0.3)
    module = build_model("gdlt", [3, 4], 8, options).train()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    results = []
    for force_mask in (False, True):
        module.zero_grad()
        set_dropout_generators(module, [torch.Generator().manual_seed(s) for s in (5, 6)])
        if force_mask:
            # a padded model beside: pad one clip of model 1's video 2 and compare model 0 only
            mask = mask.clone()
            mask[1, 2, 4] = False
        out = module(x, mask)
        out["mu"][0].sum().backward()
        results.append((out["mu"][0].detach(), module.proj1.weight.grad[0].clone(), module.queries.grad[0].clone()))
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_length_chunks_cover_every_position_and_keep_similar_lengths_together():
    longest = sorted(np.random.default_rng(0).integers(124, 235, 80).tolist(), reverse=True)
    chunks = length_chunks(longest, 32)
    assert chunks[0][0] == 0 and chunks[-1][1] == 80
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert all(0 < hi - lo <= 32 for lo, hi in chunks)
    padded = sum((hi - lo) * longest[lo] for lo, hi in chunks)
    fixed = sum(min(32, 80 - lo) * longest[lo] for lo in range(0, 80, 32))
    assert padded < fixed and padded < 1.1 * sum(longest)
    assert length_chunks([12, 1], 32) == [(0, 2)]     # one forward beats a second one for 11 padded clips
    assert len(length_chunks([5] * 70, 32)) == 3                   # equal lengths: as few chunks as fit


@pytest.mark.parametrize("head", ["gdlt", "cofinal"])
def test_evaluation_in_length_sorted_chunks_equals_each_video_alone(head):
    """predict_full reads each model's videos longest first in chunks (several models, their own rows): every
    prediction is the model's on that video alone, in the rows' order."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, 11)
    clips = rng.normal(size=(int(lengths.sum()), 8)).astype(np.float32)
    bank = ClipBank(clips, np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    options = SequenceOptions(crop=5, hidden=16, heads=2 if head == "gdlt" else 1, encoder_layers=1,
                              decoder_layers=2, queries=4, dropout=0.3)
    module = build_model(head, [1, 2], 8, options).eval()
    rows = torch.tensor([list(range(11)), [10, 3, 5, 0, 9, 1, 2, 8, 4, 7, 6]])
    got = predict_full(module, bank, rows, chunk=4)["mu"]
    with torch.no_grad():
        for j in range(11):
            for k in range(2):
                x, mask = bank.full(rows[k:k + 1, j:j + 1])
                alone = build_model(head, [[1, 2][k]], 8, options).eval()
                alone.load_state_dict({n: t[k:k + 1] for n, t in module.state_dict().items()})
                torch.testing.assert_close(got[k, j], alone(x, mask)["mu"][0, 0], rtol=1e-5, atol=1e-6)


def test_bench_counts_evaluation_flops_without_padding():
    """The bench's evaluation count is each test video's own cost: two videos of 10 and 140 clips together count
    what they count apart (a padded batch would count the short one at 140 clips)."""
    from dae.heads.recipes import get_recipe
    from dae.heads.sequence.models import SequenceHead
    from dae.heads.trainer import HeadSpec, Job
    from dae.pipeline.bench.fit import SEQUENCE_BENCH_RECIPES, count_sequence_flops
    from dae.pipeline.settings import sequence_options_of, train_config

    settings = get_recipe(SEQUENCE_BENCH_RECIPES["gdlt"]).settings
    options = sequence_options_of(settings)
    lengths = np.array([130, 130, 10, 140])
    clips = np.random.default_rng(0).normal(size=(int(lengths.sum()), 64)).astype(np.float32)
    objective = SequenceHead("gdlt", clips, np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths,
                             np.linspace(0, 1, 4, dtype=np.float32), options)
    config = train_config(settings, "gdlt", batch_size=2)

    def evaluation(test):
        return count_sequence_flops(objective, [Job(HeadSpec(seed=0), np.arange(2), {"test": np.array(test)})],
                                    config)[1]

    assert evaluation([2, 3]) == pytest.approx(evaluation([2]) + evaluation([3]), rel=1e-12)


def test_cofinal_per_video_etf_attention_skips_the_unused_projections_with_their_zero_gradient():
    """At one key per video the softmax is 1: W_q and W_k are not computed, yet get the exact zero gradient the
    softmax gives them (not None: SGD's weight decay and momentum still act on them, as in the original)."""
    from dae.heads.sequence.cofinal import ETF_ATTENTION_HEADS, StackedCoFInAl

    options = SequenceOptions(crop=5, hidden=16, heads=1, encoder_layers=1, decoder_layers=1, queries=4, dropout=0.3)
    module = StackedCoFInAl([2, 3], 8, options).train()
    q = torch.randn(2, 3, 4, 16, requires_grad=True)
    grad_out = torch.randn(2, 3, 4, 16)
    set_dropout_generators(module, [torch.Generator().manual_seed(4)])
    fast = module._regi(q)
    (fast * grad_out).sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in module.named_parameters() if n.startswith("regi")}
    fast_q = q.grad.clone()

    module.zero_grad()
    q.grad = None
    set_dropout_generators(module, [torch.Generator().manual_seed(4)])
    m, b, n, h = q.shape
    width = h // ETF_ATTENTION_HEADS
    qq, kk, v = (proj(q).view(m, b, n, ETF_ATTENTION_HEADS, width)
                 for proj in (module.regi_q, module.regi_k, module.regi_v))
    weights = module.regi_drop(torch.softmax((qq * kk).sum(-1, keepdim=True) / math.sqrt(width), dim=-1))
    plain = module.regi_out((weights * v).reshape(m, b, n, h))
    (plain * grad_out).sum().backward()
    assert torch.equal(fast, plain) and torch.equal(fast_q, q.grad)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, module.get_parameter(name).grad, rtol=0, atol=0, msg=name)
    assert all(fast_grads[f"regi_{p}.{t}"].abs().max() == 0 for p in "qk" for t in ("weight", "bias"))
