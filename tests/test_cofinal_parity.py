"""`cofinal` against its authors' code: the fixtures in ../shared/data/reference/cofinal were produced by running
ZhouKanglei/CoFInAl_AQA @ fe1f4c1 itself on real Fis-V features (see that folder's README for every array).

The authors' state dict is loaded into dae's module by `heads.cofinal.original_key_map` (documented there). The
batch-1 cases are the well-defined reference (the original scores at batch size 1) and are matched by dae's
default, per-video module; the 6-video batch mixes the videos in its ETF branch, so its ETF arrays, gradients and
SGD steps are matched with `etf_attention = "across-batch"` (the original's mixing, kept for this parity only), while
everything that does not pass the ETF attention is matched by the per-video module too.

Tolerances (float32, eps 1.2e-7). dae computes the same maths with other kernels (baddbmm for Conv1d(k=1),
separate q/k/v projections for packed attention, einsum for the diagonal scores), so sums are accumulated in
another order and each value differs by rounding only. Measured worst cases: activations 2.2e-6 absolute (the
decoded queries, order 1, after 3 transformer layers; the scores and outputs 6e-8 .. 8e-7); loss terms 6e-7
relative; gradients, momenta and parameters after a step 2.8e-6 of each tensor's largest entry, sums of squares
7e-7 relative. Tolerances: activations 2e-5 absolute, loss terms 2e-5 relative, per-tensor values 1e-4 of the
tensor's largest entry plus 1e-7 absolute, full-tensor sums / sums of squares / max |.| 1e-4 relative. The 1e-7
floor is for the two biases before a BatchNorm, whose gradients are 0 in exact arithmetic: both codes give
rounding noise there (up to 4e-8); every other gradient tensor's largest entry is at least 9e-4. A broken piece
(grade weights, ETF target class, the reverted branch, the triplet margin, batch mixing made the default) moves
its quantities by 1e-3 .. 1 relative, far outside every tolerance: each such break was made and seen to fail.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, needs_shared
from parity_helpers import clip_input, max_diff_within

REF = SHARED_DATA / "reference" / "cofinal"
pytestmark = needs_shared(REF / "state_init.npz")

ATOL_ACT = 2e-5
RTOL_LOSS = 2e-5
GRAD_REL = 1e-4
NOISE = 1e-7  # gradients that are 0 in exact arithmetic (the biases before BatchNorm): rounding noise, up to ~4e-8
LR, MOMENTUM, WEIGHT_DECAY, ALPHA, MARGIN = 0.01, 0.9, 1e-4, 0.5, 1.0


def load(name):
    return np.load(REF / f"{name}.npz")


def model(dropout: float = 0.0, etf_attention: str = "per-video"):
    from dae.heads.sequence.cofinal import StackedCoFInAl, load_original
    from dae.heads.sequence.options import SequenceOptions

    options = SequenceOptions(crop=68, hidden=256, heads=1, encoder_layers=1, decoder_layers=2, queries=4,
                              dropout=dropout, triplet_weight=ALPHA, margin=MARGIN)
    module = StackedCoFInAl([0], 1024, options)
    load_original(module, dict(load("state_init")))
    module.etf_attention = etf_attention
    return module


batch = clip_input


def close(ours, theirs, atol=ATOL_ACT, what=""):
    return max_diff_within(ours, theirs, atol, what)


def intermediates(module, x, mask):
    """Every quantity the fixtures record, from the module's own pieces (model 0)."""
    from dae.heads.sequence.cofinal import cofinal_score

    q = module.decode(x, mask)
    out = module(x, mask)
    s = torch.einsum("mbqh,mph->mbqp", q, module.regressor.weight.transpose(1, 2)) + module.regressor.bias.unsqueeze(1)
    s_rev = (torch.einsum("mbqh,mph->mbqp", q, module.regressor_revert.weight.transpose(1, 2))
             + module.regressor_revert.bias.unsqueeze(1))
    regi = module._regi(q)
    s_dec = module.etf_out(module.etf_hidden(regi.reshape(*q.shape[:2], -1)))
    logits = torch.bmm(out["dec"], module.etf)
    return {"int": out["int"][0], "int_revert": out["int_revert"][0], "dec": out["dec"][0], "embed": q[0],
            "s": s[0], "s_revert": s_rev[0], "regi_out": regi[0], "s_dec": s_dec[0], "cls_logits": logits[0],
            "argmax": logits[0].argmax(-1), "get_score": cofinal_score(out["int"], out["int_revert"], out["dec"],
                                                                     module.etf)[0], "out": out}


def test_key_map_covers_the_state_dict_both_ways():
    from dae.heads.sequence.cofinal import original_key_map, to_original

    module = model()
    state = dict(load("state_init"))
    mapped = {key for key, _, _ in original_key_map(module)}
    assert set(state) - mapped == {"in_proj.1.num_batches_tracked", "in_proj.4.num_batches_tracked"}
    ours = {n for _, names, _ in original_key_map(module) for n in names}
    assert {n for n, _ in [*module.named_parameters(), *module.named_buffers()]} - ours == {"grades"}
    back = to_original(module, 0)
    for key in mapped:
        assert back[key].shape == state[key].shape, key
        assert np.array_equal(back[key].numpy(), state[key]), key


@pytest.mark.parametrize("video", ["15", "483"])
def test_eval_batch1_matches_the_test_loop(video):
    ref, inputs = load("forward_eval_b1"), load("inputs")
    i = int(ref["batch_index"][list(ref["video_ids"]).index(video)])
    module = model().eval()
    with torch.no_grad():
        ours = intermediates(module, *batch(inputs["train_x"][i:i + 1]))
    for name in ("int", "int_revert", "dec", "embed", "s", "s_revert", "regi_out", "s_dec", "cls_logits",
                 "get_score"):
        close(ours[name], ref[f"{video}/{name}"], what=f"{video}/{name}")
    assert int(ours["argmax"][0]) == int(ref[f"{video}/argmax"])
    with torch.no_grad():  # in_proj and the encoder, through the backbone's layers
        x, mask = batch(inputs["train_x"][i:i + 1])
        h = module.bn2(module.proj2(torch.relu(module.bn1(module.proj1(x), mask))), mask)
        close(h[0], ref[f"{video}/in_proj"], what="in_proj")
        for layer in module.encoder:
            h = layer(h, mask)
        close(module.encoder_norm(h)[0], ref[f"{video}/encoder"], what="encoder")


def test_full_length_videos_alone_and_padded_together():
    """The original test loop on two full-length videos (130 and 141 clips), batch 1; dae scores them the same
    alone and in one padded, masked batch (the variable-length case)."""
    ref, inputs = load("forward_eval"), load("inputs")
    module = model().eval()
    xs = [inputs["eval_x_0"][0], inputs["eval_x_1"][0]]
    preds = []
    with torch.no_grad():
        for j, x in enumerate(xs):
            ours = intermediates(module, *batch(x[None]))
            for name in ("int", "int_revert", "dec", "embed", "s", "s_revert", "regi_out", "s_dec"):
                close(ours[name], ref[f"var_{name}_{j}"], what=f"var_{name}_{j}")
            preds.append(float(ours["get_score"][0]))
        close(np.array(preds), ref["var_pred"], what="var_pred")
        longest = max(len(x) for x in xs)
        padded = np.zeros((2, longest, xs[0].shape[1]), np.float32)
        mask = torch.zeros(1, 2, longest, dtype=torch.bool)
        for j, x in enumerate(xs):
            padded[j, :len(x)] = x
            mask[0, j, :len(x)] = True
        out = module(torch.as_tensor(padded).unsqueeze(0), mask)
    close(out["mu"][0], ref["var_pred"], what="padded var_pred")
    for j in range(2):
        close(out["int"][0, j:j + 1], ref[f"var_int_{j}"], what="padded int")
        close(out["dec"][0, j:j + 1], ref[f"var_dec_{j}"], what="padded dec")
    targets = inputs["eval_y"].astype(np.float64)
    assert abs(float(np.mean((np.array(preds) - targets) ** 2)) - float(ref["var_test_mse"])) < 1e-6


def test_six_video_eval_per_video_parts_and_the_original_batch_mixing():
    ref, inputs, b1 = load("forward_eval"), load("inputs"), load("forward_eval_b1")
    with torch.no_grad():
        ours = intermediates(model().eval(), *batch(inputs["train_x"]))
        mixed = intermediates(model(etf_attention="across-batch").eval(), *batch(inputs["train_x"]))
    for name in ("int", "int_revert", "embed", "s", "s_revert"):
        close(ours[name], ref[f"batch_{name}"], what=f"batch_{name}")
    for name in ("regi_out", "s_dec", "dec", "cls_logits"):
        close(mixed[name], ref[f"batch_{name}"], what=f"batch_{name} (across-batch)")
        # per video, a video's ETF branch is its batch-1 one whatever shares its batch
        for video, i in zip(b1["video_ids"], b1["batch_index"]):
            close(ours[name][i:i + 1], b1[f"{video}/{name}"], what=f"{name} of {video} in the batch")
    assert int(torch.argmax(mixed["cls_logits"])) == int(ref["batch_argmax_flat"])


def targets_of(inputs, rows):
    return torch.as_tensor(inputs["train_y_float64"][rows]).float().unsqueeze(0)


def loss_step(module, x, target):
    from dae.heads.sequence.cofinal import cofinal_loss, cofinal_loss_terms, grade_targets

    out = module(*batch(x))
    terms = cofinal_loss_terms(out, target, module.etf, MARGIN)
    g1, g2, etf_target = grade_targets(target, module.etf)
    return out, terms, cofinal_loss(terms, ALPHA), (g1, g2, etf_target)


def check_terms(terms, total, grades, ref, prefix):
    g1, g2, etf_target = grades
    close(g1[0], ref[f"{prefix}target_grade"], atol=0, what="g1")
    close(1 - g1[0], ref[f"{prefix}target_grade_revert"], atol=0, what="1 - g1")
    assert np.array_equal(g2[0].numpy(), ref[f"{prefix}target_class"]), "g2"
    close(etf_target[0], ref[f"{prefix}target_etf"], atol=0, what="etf target")
    for name in ("mse_int", "mse_int_revert", "l1_dec", "triplet"):
        theirs = float(ref[f"{prefix}loss_{name}"])
        assert abs(terms[name][0].item() - theirs) <= RTOL_LOSS * abs(theirs), (name, terms[name][0].item(), theirs)
    theirs = float(ref[f"{prefix}loss_total"])
    assert abs(total[0].item() - theirs) <= RTOL_LOSS * abs(theirs), ("total", total[0].item(), theirs)


def optimizer(module):
    optim = pytest.importorskip("dae.heads.optim", reason="the trainer's optimizers (heads/optim.py) are absent")
    from dae.heads.config import TrainConfig

    config = TrainConfig(optimizer="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, epochs=200,
                         schedule="cosine", eta_min=0.01)
    return optim.make_optimizer([{"params": list(module.parameters())}], config)


def momentum_of(opt):
    return lambda p: opt.state[p]["momentum_buffer"] if p.requires_grad else None


def params_of(p):
    return p.detach() if p.requires_grad else None


def check_tensors(module, value, sampled, strides, stats=None, row=None, prefix="", what="", rel=GRAD_REL):
    """Every parameter's `value` (grad, param or momentum) against sampled values and full-tensor stats."""
    from dae.heads.sequence.cofinal import to_original

    ours = to_original(module, 0, value)
    assert set(ours) >= {k for k in strides}, set(strides) - set(ours)
    worst = 0.0
    for key in strides:
        t = ours[key].double().numpy()
        stride = int(strides[key])
        scale = float(np.abs(t).max()) + 1e-30
        if sampled is not None:
            got = t if stride == 1 else t.reshape(-1)[::stride]
            diff = close(got, sampled[f"{prefix}{key}"], atol=rel * scale + NOISE, what=f"{what} {key}")
            worst = max(worst, diff / scale)
        if stats is not None:
            s, sq, mx = stats[f"{prefix}{key}"][row]
            assert abs(t.sum() - s) <= rel * np.abs(t).sum() + NOISE * t.size ** 0.5, (what, key, "sum", t.sum(), s)
            assert abs((t ** 2).sum() - sq) <= rel * sq + 1e-12, (what, key, "sum of squares")
            assert abs(np.abs(t).max() - mx) <= rel * mx + NOISE, (what, key, "max abs")
    return worst


@pytest.mark.parametrize("video", ["15", "483"])
def test_batch1_training_step_loss_gradients_and_sgd(video):
    ref, inputs, strides = load("train_step_b1"), load("inputs"), dict(load("sample_stride"))
    i = int(ref["batch_index"][list(ref["video_ids"]).index(video)])
    module = model().train()
    out, terms, total, grades = loss_step(module, inputs["train_x"][i:i + 1], targets_of(inputs, [i]))
    for name in ("int", "int_revert", "dec", "embed"):
        close(out[name][0], ref[f"{video}/{name}"], what=f"train {name}")
    check_terms(terms, total, grades, ref, f"{video}/")
    opt = optimizer(module)
    opt.zero_grad()
    total.sum().backward()
    stats = load("full_tensor_stats_b1")
    check_tensors(module, lambda p: p.grad, load("grads_b1_sampled"), strides, stats, 0, f"{video}/", "grad")
    assert float(module.regi_q.weight.grad.abs().max()) == 0 and float(module.regi_k.weight.grad.abs().max()) == 0
    opt.step()
    after = load("state_after_step_b1_sampled")
    check_tensors(module, params_of, after, strides, stats, 1, f"{video}/", "param")
    check_tensors(module, momentum_of(opt), None, strides, stats, 2, f"{video}/", "momentum")
    for name in ("running_mean", "running_var"):
        for ours_key, theirs in (("bn1", "in_proj.1"), ("bn2", "in_proj.4")):
            close(getattr(module, ours_key).__getattr__(name)[0].reshape(-1), after[f"{video}/{theirs}.{name}"],
                  atol=1e-5, what=f"{theirs}.{name}")


def test_six_video_batch_two_sgd_steps_with_momentum():
    """The fixtures' two training iterations on the 6-video batch. Their ETF attention mixes the batch's videos, so
    the module runs with the original's mixing here; everything else is the per-video module's computation."""
    ref, inputs, strides = load("train_step"), load("inputs"), dict(load("sample_stride"))
    stats = load("full_tensor_stats")
    module = model(etf_attention="across-batch").train()
    opt = optimizer(module)
    target = targets_of(inputs, list(range(6)))
    for step in (1, 2):
        assert float(ref[f"step{step}_lr"]) == opt.param_groups[0]["lr"]
        out, terms, total, grades = loss_step(module, inputs["train_x"], target)
        for name in ("int", "int_revert", "dec", "embed"):
            close(out[name][0], ref[f"step{step}_{name}"], what=f"step {step} {name}")
        check_terms(terms, total, grades, ref, f"step{step}_")
        opt.zero_grad()
        total.sum().backward()
        check_tensors(module, lambda p: p.grad, load(f"grads_step{step}_sampled"), strides, stats, step - 1, "",
                      f"grad step {step}")
        opt.step()
        check_tensors(module, params_of, load(f"state_after_step{step}_sampled"), strides, stats, 1 + step, "",
                      f"param after step {step}")
        check_tensors(module, momentum_of(opt), load(f"momentum_step{step}_sampled"), strides, stats, 3 + step, "",
                      f"momentum after step {step}")
        after = load(f"state_after_step{step}_sampled")
        for ours_key, theirs in (("bn1", "in_proj.1"), ("bn2", "in_proj.4")):
            for name in ("running_mean", "running_var"):
                close(getattr(module, ours_key).__getattr__(name)[0].reshape(-1), after[f"{theirs}.{name}"],
                      atol=1e-5, what=f"{theirs}.{name} after step {step}")


def test_six_video_step1_terms_that_do_not_pass_the_etf_attention():
    """Per video (dae's default), step 1's coarse grades, targets, MSE and triplet terms and the Likert regressors'
    gradients are the batch's own: they never pass the batch-mixing attention."""
    ref, inputs, strides = load("train_step"), load("inputs"), dict(load("sample_stride"))
    module = model().train()
    out, terms, total, grades = loss_step(module, inputs["train_x"], targets_of(inputs, list(range(6))))
    for name in ("int", "int_revert", "embed"):
        close(out[name][0], ref[f"step1_{name}"], what=name)
    for name in ("mse_int", "mse_int_revert", "triplet"):
        theirs = float(ref[f"step1_loss_{name}"])
        assert abs(terms[name][0].item() - theirs) <= RTOL_LOSS * abs(theirs), name
    total.sum().backward()
    likert = {k: v for k, v in strides.items() if k.split(".")[0] in ("regressor", "regressor_revert")}
    assert len(likert) == 4
    check_tensors(module, lambda p: p.grad, load("grads_step1_sampled"), likert, load("full_tensor_stats"), 0, "",
                  "grad")


def test_cosine_schedule_is_cofinal_s_over_200_epochs():
    optim = pytest.importorskip("dae.heads.optim", reason="the trainer's schedules (heads/optim.py) are absent")
    from dae.heads.config import TrainConfig

    ref = load("lr_schedule")
    config = TrainConfig(optimizer="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, epochs=200,
                         schedule="cosine", eta_min=0.01)
    ours = np.array([LR * optim.lr_factor(config, e) for e in range(200)])
    assert np.abs(ours - ref["lr"]).max() <= 1e-15
