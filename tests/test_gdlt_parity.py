"""`gdlt` against its authors' code: the fixtures in ../shared/data/reference/gdlt were produced by running
xuangch/CVPR22_GDLT @ b9aa9ef itself (the fork WHR666777/CVPR22_GDLT @ 0f06f2b's Fis-V TES recipe) on real Fis-V
features; that folder's README lists every array.

The authors' state dict is loaded into dae's stacked module by `heads.sequence.load_original` with the key map
`heads.sequence.original_key_map` (documented there: Conv1d / Linear weights transposed, the packed attention
projection split into q, k, v). The training quantities go through the code `dae fit` runs: `SequenceHead.inputs`
and `SequenceHead.loss` (crops, MSE + alpha x hardest triplet), the trainer's `make_optimizer` and `set_epoch_lr`
at the recipe `gdlt:fis-v-tes`, and the fit's target scaling (`pipeline.fit.target_range`).

Tolerances (float32, eps 1.2e-7). dae computes the same maths with other kernels (baddbmm for Conv1d(k=1), separate
q/k/v projections for the packed attention, einsum for the diagonal scores), so sums run in another order: each
activation differs by rounding only, measured at most ~2e-6 absolute on values of order 1 after three transformer
layers (outputs ~1e-7). Activations are compared at 2e-5 absolute (10x the measured), loss terms at 2e-5 relative.
A gradient entry of the 1024-wide projection sums 6 x 124 products: gradients are compared per tensor at 1e-4 of
that tensor's largest entry plus 1e-7 absolute (the biases before a BatchNorm have gradient 0 in exact arithmetic,
so both codes give rounding noise there, ~1e-8); full-tensor sums of squares at 1e-4 relative, sums at 1e-4 of the
sum of |g| (about sqrt(n) x max |g|; bounded here by n x max |g|, computed from the fixture's own statistics). An SGD
step moves a parameter by lr (m + ...) ~ 1e-2 x g, so parameters after a step agree to 1e-6 absolute and momentum
buffers as gradients do. The schedule is float64 arithmetic: 1e-15 absolute. Each deliberate break (dropout moved
or dropped, the triplet margin, the schedule, the target scaling) moves its quantity by 1e-3 .. 1 relative, far
outside these tolerances.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, needs_shared
from parity_helpers import clip_input, max_diff_within

REF = SHARED_DATA / "reference" / "gdlt"
pytestmark = [needs_shared(REF / "state_init.npz"), pytest.mark.usefixtures("one_thread")]

ATOL_ACT = 2e-5
RTOL_LOSS = 2e-5
GRAD_REL = 1e-4
NOISE = 1e-7
RECIPE = "gdlt:fis-v-tes"


def load(name):
    return np.load(REF / f"{name}.npz")


def recipe_options(dropout=None):
    """The recipe's SequenceOptions and TrainConfig, read from heads/recipes/gdlt.toml."""
    from dae.heads.config import TrainConfig
    from dae.heads.recipes import get_recipe
    from dae.heads.sequence.options import SequenceOptions

    s = get_recipe(RECIPE).settings
    options = SequenceOptions(crop=s["crop"], hidden=s["hidden"], heads=s["attention_heads"],
                              encoder_layers=s["encoder_layers"], decoder_layers=s["decoder_layers"],
                              queries=s["queries"], dropout=s["dropout"] if dropout is None else dropout,
                              triplet_weight=s["triplet_weight"], margin=s["margin"])
    config = TrainConfig(epochs=s["epochs"], lr=s["lr"], weight_decay=s["weight_decay"], batch_size=s["batch_size"],
                         optimizer=s["optimizer"], momentum=s["momentum"], nesterov=s["nesterov"],
                         schedule=s["schedule"], eta_min=s["eta_min"], warmup_epochs=s["warmup_epochs"])
    return options, config


def model(dropout=0.0):
    """dae's gdlt module (one model) holding the authors' initial weights; dropout off unless asked (the
    fixtures' training passes ran with every dropout disabled)."""
    from dae.heads.sequence.models import StackedGDLT, load_original

    options, _ = recipe_options(dropout)
    module = StackedGDLT([0], 1024, options, "likert")
    load_original(module, dict(load("state_init")))
    return module


as_input = clip_input


def close(ours, theirs, atol=ATOL_ACT, what=""):
    return max_diff_within(ours, theirs, atol, what)


def intermediates(module, x, mask):
    """What forward_eval.npz records, from the module's own layers (model 0, batch first)."""
    h = module.bn2(module.proj2(torch.relu(module.bn1(module.proj1(x), mask))), mask)
    e = h
    for layer in module.encoder:
        e = layer(e, mask)
    e = module.encoder_norm(e)
    q = module.decode(x, mask)
    reg = module.regressor(q)                                            # (1, b, Q, Q): row n = query n's scores
    s = torch.diagonal(reg, dim1=-2, dim2=-1)
    likert = torch.sigmoid(s) / torch.sigmoid(s).sum(-1, keepdim=True)
    out = module(x, mask)
    return {"in_proj": h[0], "encoder": e[0], "embed": q[0], "regressor": reg[0], "s_diag": s[0], "likert": likert[0],
            "output": out["mu"][0]}


def sequence_head(train_x, targets, options):
    """The SequenceHead `dae fit` trains, over a bank holding exactly the recorded crops (so its crop is the whole
    of each: the inputs are the fixture's batch, in its order)."""
    from dae.heads.sequence.models import SequenceHead

    n, length, dim = train_x.shape
    clips = np.asarray(train_x, dtype=np.float32).reshape(n * length, dim)
    return SequenceHead("gdlt", clips, np.arange(n) * length, np.full(n, length), targets, options)


def train_batch(rows):
    from dae.heads.trainer import Batch

    rows = torch.as_tensor(np.asarray(rows)).view(1, -1)
    return Batch(rows, torch.zeros(1, dtype=torch.long), 1, [torch.Generator().manual_seed(0)], True)


def head_loss(head, module, rows):
    """Per-term losses exactly as SequenceHead.loss computes the total (the total itself comes from it)."""
    from dae.heads.sequence.models import hardest_triplet_loss

    batch = train_batch(rows)
    x, mask = head.inputs(module, batch)
    running = {k: v.clone() for k, v in module.named_buffers()}
    out = module(x, mask)  # the terms' forward: its BatchNorm statistics update is undone below
    with torch.no_grad():
        for k, v in module.named_buffers():
            v.copy_(running[k])
    mse = ((out["mu"] - head.g[batch.rows]) ** 2).mean(-1)
    triplet = hardest_triplet_loss(out["embed"], head.options.margin)
    total = head.loss(module, (x, mask), batch, torch.zeros(1, 3))  # the fit's own loss, backpropagated
    return total, mse, triplet, out


def sampled(t, stride):
    t = np.asarray(t.detach() if torch.is_tensor(t) else t, dtype=np.float64)
    return t if stride == 1 else t.reshape(-1)[::stride]


def compare_tensors(ours: dict, theirs, strides, what, rel=GRAD_REL, noise=NOISE, prefix=""):
    """Per original key: ours (whole) sampled with the fixture's stride vs the fixture's sample."""
    worst = 0.0
    for key, value in ours.items():
        ref = np.asarray(theirs[prefix + key], dtype=np.float64)
        mine = sampled(value, int(strides[key]))
        assert mine.shape == ref.shape, (what, key)
        tol = rel * max(float(np.abs(ref).max()), 0.0) + noise
        diff = float(np.abs(mine - ref).max())
        assert diff <= tol, f"{what} {key}: max |diff| {diff:.3g} > {tol:.3g}"
        worst = max(worst, diff)
    return worst


def compare_stats(ours: dict, stats, row: int, what, prefix=""):
    """Full-tensor sum, sum of squares and max |.| (fixture row `row`) of every parameter."""
    for key, value in ours.items():
        v = np.asarray(value.detach(), dtype=np.float64)
        ref = np.asarray(stats[prefix + key])[row]
        s, ss, mx = v.sum(), (v ** 2).sum(), np.abs(v).max()
        assert abs(ss - ref[1]) <= GRAD_REL * ref[1] + NOISE ** 2 * v.size, (what, key, "sum of squares", ss, ref[1])
        assert abs(mx - ref[2]) <= GRAD_REL * ref[2] + NOISE, (what, key, "max", mx, ref[2])
        assert abs(s - ref[0]) <= GRAD_REL * v.size * ref[2] + NOISE * v.size, (what, key, "sum", s, ref[0])


# ---------------------------------------------------------------------------------------------------------------
# The network: eval outputs and every intermediate, batched, variable length and batch 1


def test_state_init_maps_onto_every_parameter_and_back():
    """The key map covers GDLT's whole state dict (but the BatchNorm counters) and every dae parameter, both ways."""
    from dae.heads.sequence.models import original_key_map, to_original

    state = dict(load("state_init"))
    module = model()
    names = {n for _, ns, _ in original_key_map(module) for n in ns}
    assert names == {*dict(module.named_parameters()), *dict(module.named_buffers())}
    back = to_original(module, 0)
    assert set(back) == {k for k in state if not k.endswith("num_batches_tracked")}
    for key, value in back.items():
        assert np.array_equal(value.numpy(), state[key]), key


def test_eval_outputs_and_intermediates_match_the_6_video_batch():
    inputs, ref = load("inputs"), load("forward_eval")
    module = model().eval()
    with torch.no_grad():
        got = intermediates(module, *as_input(inputs["train_x"]))
    for name in ("in_proj", "encoder", "embed", "regressor", "s_diag", "likert", "output"):
        close(got[name], ref[f"batch_{name}"], what=name)
    close(torch.linspace(0, 1, 4), ref["grade_weights"], atol=0, what="grade weights")


def test_eval_matches_the_test_loop_on_full_length_videos_alone_and_padded_together():
    """The original test loop scores each full-length video alone (130 and 141 clips); dae gives the same alone and
    when the two share one padded batch (padding masked), and the loop's MSE."""
    inputs, ref = load("inputs"), load("forward_eval")
    module = model().eval()
    with torch.no_grad():
        preds = []
        for i in range(2):
            out = module(*as_input(inputs[f"eval_x_{i}"]))
            close(out["mu"][0], ref[f"var_output_{i}"], what=f"video {i} output")
            close(out["embed"][0], ref[f"var_embed_{i}"], what=f"video {i} embed")
            close(module.regressor(out["embed"])[0], ref[f"var_regressor_{i}"], what=f"video {i} regressor")
            preds.append(float(out["mu"][0, 0]))
        long = inputs["eval_x_1"].shape[1]
        x = np.zeros((2, long, 1024), np.float32)
        x[0, :inputs["eval_x_0"].shape[1]], x[1] = inputs["eval_x_0"][0], inputs["eval_x_1"][0]
        mask = torch.zeros(1, 2, long, dtype=torch.bool)
        mask[0, 0, :inputs["eval_x_0"].shape[1]], mask[0, 1] = True, True
        padded = module(torch.as_tensor(x).unsqueeze(0), mask)["mu"][0]
    close(padded, [ref["var_output_0"][0], ref["var_output_1"][0]], what="padded pair")
    mse = np.mean((np.array(preds) - inputs["eval_y"].astype(np.float64)) ** 2)
    assert mse == pytest.approx(float(ref["var_test_mse"]), rel=RTOL_LOSS)


def test_eval_matches_the_batch_1_cases():
    inputs, ref = load("inputs"), load("forward_eval_b1")
    module = model().eval()
    for vid, i in zip(ref["video_ids"], ref["batch_index"]):
        with torch.no_grad():
            got = intermediates(module, *as_input(inputs["train_x"][i:i + 1]))
        for name in ("in_proj", "encoder", "embed", "regressor", "s_diag", "likert", "output"):
            close(got[name], ref[f"{vid}/{name}"], what=f"{vid} {name}")


# ---------------------------------------------------------------------------------------------------------------
# Training: loss terms, gradients, two SGD steps with momentum, BatchNorm statistics, the schedule


def test_two_sgd_steps_match_loss_terms_gradients_momentum_and_parameters():
    """Two iterations of the original train_epoch on one 6-video batch (dropout off, BatchNorm on batch statistics):
    every loss term, the gradients (sampled values and full-tensor statistics), the momentum buffers and the
    parameters and BatchNorm statistics after each SGD step, with the recipe's optimizer at its epoch-0 lr."""
    from dae.heads.optim import make_optimizer, set_epoch_lr
    from dae.heads.sequence.models import to_original

    inputs, steps = load("inputs"), load("train_step")
    strides = dict(load("sample_stride"))
    stats = load("full_tensor_stats")
    options, config = recipe_options(dropout=0.0)
    head = sequence_head(inputs["train_x"], inputs["train_y"], options)
    module = model()
    opt = make_optimizer(head.param_groups(module, config), config)
    set_epoch_lr(opt, config, 0)
    rows = np.arange(6)
    for step in (1, 2):
        module.train()
        total, mse, triplet, out = head_loss(head, module, rows)
        close(out["mu"][0], steps[f"step{step}_output"], what=f"step {step} output")
        close(out["embed"][0], steps[f"step{step}_embed"], what=f"step {step} embed")
        close(head.g[rows], steps[f"step{step}_label"], atol=0, what="labels")
        for name, value in (("mse", mse), ("triplet", triplet), ("total", total)):
            assert float(value.detach()) == pytest.approx(float(steps[f"step{step}_loss_{name}"]), rel=RTOL_LOSS), (step, name)
        assert opt.param_groups[0]["lr"] == float(steps[f"step{step}_lr"])
        opt.zero_grad()
        total.sum().backward()
        grads = to_original(module, 0, lambda t: t.grad)
        compare_tensors(grads, load(f"grads_step{step}_sampled"), strides, f"step {step} grad")
        compare_stats(grads, stats, step - 1, f"step {step} grad")
        opt.step()
        params = {k: v for k, v in to_original(module, 0).items() if k in strides}
        compare_tensors(params, load(f"state_after_step{step}_sampled"), strides, f"after step {step}",
                        rel=0.0, noise=1e-6)
        compare_stats(params, stats, step + 1, f"after step {step}")
        buffers = {k: v for k, v in to_original(module, 0).items() if "running" in k}
        compare_tensors(buffers, load(f"state_after_step{step}_sampled"), dict.fromkeys(buffers, 1),
                        f"BatchNorm after step {step}", rel=0.0, noise=ATOL_ACT)
        momentum = to_original(module, 0, lambda t: opt.state[t]["momentum_buffer"] if t in opt.state else None)
        compare_tensors(momentum, load(f"momentum_step{step}_sampled"), strides, f"momentum after step {step}")
        compare_stats(momentum, stats, step + 3, f"momentum after step {step}")


@pytest.mark.parametrize("case", [0, 1])
def test_batch_1_training_step_matches(case):
    """Each video alone: BatchNorm over its 124 clips, the triplet loss over its own 4 queries, one SGD step."""
    from dae.heads.optim import make_optimizer, set_epoch_lr
    from dae.heads.sequence.models import to_original

    inputs, ref = load("inputs"), load("train_step_b1")
    vid, i = ref["video_ids"][case], int(ref["batch_index"][case])
    strides = dict(load("sample_stride"))
    options, config = recipe_options(dropout=0.0)
    head = sequence_head(inputs["train_x"][i:i + 1], inputs["train_y"][i:i + 1], options)
    module = model().train()
    opt = make_optimizer(head.param_groups(module, config), config)
    set_epoch_lr(opt, config, 0)
    total, mse, triplet, out = head_loss(head, module, [0])
    close(out["mu"][0], ref[f"{vid}/output"], what="output")
    close(out["embed"][0], ref[f"{vid}/embed"], what="embed")
    for name, value in (("mse", mse), ("triplet", triplet), ("total", total)):
        assert float(value.detach()) == pytest.approx(float(ref[f"{vid}/loss_{name}"]), rel=RTOL_LOSS), name
    opt.zero_grad()
    total.sum().backward()
    grads = to_original(module, 0, lambda t: t.grad)
    compare_tensors(grads, load("grads_b1_sampled"), strides, "grad", prefix=f"{vid}/")
    compare_stats(grads, load("full_tensor_stats_b1"), 0, "grad", prefix=f"{vid}/")
    opt.step()
    after = to_original(module, 0)
    params = {k: v for k, v in after.items() if k in strides}
    compare_tensors(params, load("state_after_step_b1_sampled"), strides, "after step", rel=0.0, noise=1e-6,
                    prefix=f"{vid}/")
    compare_stats(params, load("full_tensor_stats_b1"), 1, "after step", prefix=f"{vid}/")
    buffers = {k: v for k, v in after.items() if "running" in k}
    compare_tensors(buffers, load("state_after_step_b1_sampled"), dict.fromkeys(buffers, 1), "BatchNorm",
                    rel=0.0, noise=ATOL_ACT, prefix=f"{vid}/")
    momentum = to_original(module, 0, lambda t: opt.state[t]["momentum_buffer"] if t in opt.state else None)
    compare_stats(momentum, load("full_tensor_stats_b1"), 2, "momentum", prefix=f"{vid}/")


def test_the_recipes_schedule_is_gdlts_over_all_320_epochs():
    """The lr of every epoch (GDLT's CosineAnnealingLR stepped after each epoch, read at the epoch's start) and after
    the last step, from the trainer's own schedule at the recipe's settings."""
    from dae.heads.optim import lr_factor, make_optimizer, set_epoch_lr

    ref = load("lr_schedule")
    _, config = recipe_options()
    assert config.epochs == len(ref["lr"]) == 320
    opt = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], config)
    for epoch, lr in enumerate(ref["lr"]):
        set_epoch_lr(opt, config, epoch)
        assert abs(opt.param_groups[0]["lr"] - lr) <= 1e-15, (epoch, opt.param_groups[0]["lr"], lr)
    assert abs(config.lr * lr_factor(config, config.epochs) - float(ref["lr_after_last_epoch"])) <= 1e-15


def test_the_fits_target_scaling_is_gdlts_y_over_the_max_training_score():
    """`target_scale max` on the Fis-V training list gives GDLT's targets for the recorded videos, bit for bit in
    float32, and its score_max (the largest training TES)."""
    import pandas as pd

    from dae.pipeline.fit import FitPlan, target_range

    labels = SHARED_DATA / "labels" / "fisv.csv"
    if not labels.exists():
        pytest.skip(f"reference data {labels} is absent (../shared/data)")
    inputs = load("inputs")
    table = pd.read_csv(labels)
    table = table[table["split"] == "train"]
    ids = table.filter(regex="^(video_id|id)$").iloc[:, 0].astype(str)
    manifest = pd.DataFrame({"video_id": ids.to_numpy(), "score": table["tes"].to_numpy(float), "fold": 0})
    plan = FitPlan(head="gdlt", dataset="fis-v", score_range=(6.33, 42.81), target_scale="max")
    lo, hi = target_range(manifest, plan)
    assert (lo, hi) == (0.0, float(inputs["score_max"]))
    scores = manifest.set_index("video_id")["score"]
    y = ((scores.loc[list(inputs["train_ids"])].to_numpy() - lo) / (hi - lo)).astype(np.float32)
    assert np.array_equal(y, inputs["train_y"])
    range_plan = FitPlan(head="gdlt", dataset="fis-v", score_range=(6.33, 42.81))
    assert target_range(manifest, range_plan) == (6.33, 42.81)


# ---------------------------------------------------------------------------------------------------------------
# Dropout placement: GDLT's sites (models/transformer.py, torch 1.10's layers) against dae's, with the same masks


def _reference_forward(state, x, p, gen):
    """GDLT's forward written out from its code (models/model.py, models/transformer.py), dropout at its sites:
    each layer's attention weights (MultiheadAttention(dropout=p)), the self-attention output (dropout1), the FFN's
    hidden units (dropout), the cross-attention output (decoder dropout2) and the FFN output (encoder dropout2,
    decoder dropout3). Masks are drawn from `gen` in the order the sites are reached, each of the shape dae's
    Dropout draws for it (the activation without the model dimension), so equal masks mean equal placement."""
    t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in state.items()}

    def drop(a):
        keep = torch.rand(a.shape, generator=gen) >= p
        return a * keep / (1 - p)

    def bn(a, key):  # training-mode BatchNorm1d over (batch, clips)
        mean, var = a.mean(dim=(0, 1)), a.var(dim=(0, 1), unbiased=False)
        return (a - mean) / torch.sqrt(var + 1e-5) * t[f"{key}.weight"] + t[f"{key}.bias"]

    def lin(a, key):
        return a @ t[f"{key}.weight"].T + t[f"{key}.bias"]

    def attn(q, kv, key):
        w, b = t[f"{key}.in_proj_weight"].chunk(3), t[f"{key}.in_proj_bias"].chunk(3)
        qq, kk, vv = q @ w[0].T + b[0], kv @ w[1].T + b[1], kv @ w[2].T + b[2]
        weights = torch.softmax(qq @ kk.transpose(1, 2) / math.sqrt(qq.shape[-1]), -1)
        return lin(drop(weights) @ vv, f"{key}.out_proj")

    def norm(a, key):
        return torch.nn.functional.layer_norm(a, a.shape[-1:], t[f"{key}.weight"], t[f"{key}.bias"])

    h = torch.relu(bn(x @ t["in_proj.0.weight"][..., 0].T + t["in_proj.0.bias"], "in_proj.1"))
    h = bn(h @ t["in_proj.3.weight"][..., 0].T + t["in_proj.3.bias"], "in_proj.4")
    e = "transformer.encoder.layers.0"
    h = norm(h + drop(attn(h, h, f"{e}.self_attn")), f"{e}.norm1")
    h = norm(h + drop(lin(drop(torch.relu(lin(h, f"{e}.linear1"))), f"{e}.linear2")), f"{e}.norm2")
    h = norm(h, "transformer.encoder.norm")
    q = t["prototype.weight"].unsqueeze(0).repeat(x.shape[0], 1, 1)
    for i in range(2):
        d = f"transformer.decoder.layers.{i}"
        q = norm(q + drop(attn(q, q, f"{d}.self_attn")), f"{d}.norm1")
        q = norm(q + drop(attn(q, h, f"{d}.multihead_attn")), f"{d}.norm2")
        q = norm(q + drop(lin(drop(torch.relu(lin(q, f"{d}.linear1"))), f"{d}.linear2")), f"{d}.norm3")
    q = norm(q, "transformer.decoder.norm")
    s = torch.diagonal(lin(q, "regressor"), dim1=-2, dim2=-1)
    p_ = torch.sigmoid(s) / torch.sigmoid(s).sum(-1, keepdim=True)
    return (p_ * torch.linspace(0, 1, 4)).sum(-1), q


def test_dropout_sits_where_gdlts_does():
    """At the recipe's dropout 0.7 in training mode, dae's module equals GDLT's forward with the same masks at GDLT's
    sites. Without dropout the written-out forward reproduces the fixture's training-mode outputs (it is GDLT's)."""
    from dae.heads.sequence.models import set_dropout_generators

    inputs, steps = load("inputs"), load("train_step")
    state = dict(load("state_init"))
    x = torch.as_tensor(inputs["train_x"].astype(np.float32))
    out, q = _reference_forward(state, x, 0.0, torch.Generator().manual_seed(0))
    close(out, steps["step1_output"], what="written-out forward, no dropout")
    close(q, steps["step1_embed"], what="written-out forward, no dropout")
    options, _ = recipe_options()
    assert options.dropout == 0.7
    module = model(dropout=options.dropout).train()
    set_dropout_generators(module, [torch.Generator().manual_seed(5)])
    ours = module(*as_input(inputs["train_x"]))
    theirs, q_ref = _reference_forward(state, x, options.dropout, torch.Generator().manual_seed(5))
    assert float((theirs - torch.as_tensor(steps["step1_output"])).abs().max()) > 1e-3  # the masks do act
    close(ours["mu"][0], theirs, what="output with dropout")
    close(ours["embed"][0], q_ref, what="embed with dropout")
