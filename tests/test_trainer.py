"""The batched trainer ends where each head would have ended trained alone, and selects the right epoch."""
import numpy as np
import pytest
import torch

from dae.heads.losses import LOSSES
from dae.heads.metrics import spearman
from dae.heads.trainer import HeadSpec, Job, TrainConfig, train_heads, train_one

SMALL = dict(hidden=(16, 8), lr=3e-3, batch_size=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=150, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    w = rng.standard_normal(dim)
    targets = 1.0 / (1.0 + np.exp(-(x @ w) / np.sqrt(dim))) + 0.05 * rng.standard_normal(n)
    return x, targets.astype(np.float32)


def _assert_same_as_alone(x, targets, jobs, config):
    batched = train_heads(x, targets, jobs, config)
    for job, res in zip(jobs, batched):
        alone = train_one(x, targets, job, config)
        for name in job.eval_rows:
            a, b = res.predictions[name], alone.predictions[name]
            assert np.max(np.abs(a["mu"] - b["mu"])) <= 1e-3, (job.spec, name)
            if job.spec.loss == "sup":  # no term trains sigma: not reported
                assert a["scale"] is None
                continue
            assert np.max(np.abs(a["scale"] - b["scale"]) / b["scale"]) <= 1e-2, (job.spec, name)
        assert res.distribution.params == pytest.approx(alone.distribution.params, rel=1e-3)
        for key, value in alone.state_dict.items():
            assert res.state_dict[key].shape == value.shape
    return batched


def test_batched_heads_match_training_each_alone():
    """Every loss and both reparameterisations, 2 seeds, 2 folds of equal size: one stacked model of 24 heads."""
    x, targets = _data()
    folds = [(np.arange(0, 100), np.arange(100, 150)), (np.arange(50, 150), np.arange(0, 50))]
    jobs = [Job(HeadSpec(seed=seed, loss=loss, reparam=reparam), train, {"test": test})
            for train, test in folds for seed in (0, 1) for loss in LOSSES for reparam in ("sigma", "variance")
            if reparam == "sigma" or loss in ("v1", "rec")]
    batched = _assert_same_as_alone(x, targets, jobs, TrainConfig(epochs=12, **SMALL))
    # The heads really differ: different losses give different predictions.
    mus = np.stack([r.predictions["test"]["mu"] for r in batched])
    assert np.ptp(mus[:, 0]) > 1e-3


@pytest.mark.parametrize("optimizer", [
    dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4, schedule="cosine", eta_min=0.01, lr=3e-2),
    dict(optimizer="sgd", momentum=0.9, nesterov=True, schedule="cosine", warmup_epochs=3, accumulate=2, lr=3e-2),
    dict(optimizer="adamw", weight_decay=1e-2, schedule="cosine", eta_min=0.1),
])
def test_batched_heads_match_alone_with_each_optimizer_and_schedule(optimizer):
    """SGD (momentum, nesterov, weight decay), AdamW, cosine to a floor, warmup and accumulation: the stacked
    models still end where each would have ended alone, and the schedule is applied (not a constant lr)."""
    x, targets = _data(seed=2)
    folds = [(np.arange(0, 100), np.arange(100, 150)), (np.arange(50, 150), np.arange(0, 50))]
    jobs = [Job(HeadSpec(seed=seed, loss=loss), train, {"test": test})
            for train, test in folds for seed in (0, 1) for loss in ("v1", "sup")]
    config = TrainConfig(epochs=10, **{**SMALL, **optimizer})
    batched = _assert_same_as_alone(x, targets, jobs, config)
    constant = train_one(x, targets, jobs[0], TrainConfig(epochs=10, **{**SMALL, **optimizer, "schedule": "constant",
                                                                       "eta_min": 0.0, "warmup_epochs": 0}))
    assert np.max(np.abs(constant.predictions["test"]["mu"] - batched[0].predictions["test"]["mu"])) > 1e-4


def test_a_failure_inside_an_optimizer_step_is_an_error():
    """No silent fallback (issue 22): a gradient the optimizer cannot apply stops training with torch's error."""
    from dae.heads.optim import make_optimizer

    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([{"params": [p]}], TrainConfig(lr=0.1))
    p.grad = torch.ones(3).to_sparse()  # a head that produced a gradient Adam cannot take
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("distribution", ["laplace", "logistic", "student-t:3", "student-t:learned"])
def test_batched_heads_match_alone_for_each_distribution(distribution):
    x, targets = _data(seed=1)
    train, test = np.arange(110), np.arange(110, 150)
    jobs = [Job(HeadSpec(seed=seed, loss=loss, distribution=distribution), train, {"test": test})
            for seed in (3, 4) for loss in ("nll", "v1")]
    _assert_same_as_alone(x, targets, jobs, TrainConfig(epochs=10, **SMALL))


def test_unequal_groups_fall_back_to_one_head_per_group():
    """Seed 0 trains 2 losses, seed 1 trains 1: groups of unequal size, still each head as if alone."""
    x, targets = _data(seed=2)
    train, test = np.arange(100), np.arange(100, 150)
    jobs = [Job(HeadSpec(seed=0, loss="v1"), train, {"test": test}),
            Job(HeadSpec(seed=0, loss="nll"), train, {"test": test}),
            Job(HeadSpec(seed=1, loss="sup"), train, {"test": test})]
    _assert_same_as_alone(x, targets, jobs, TrainConfig(epochs=8, **SMALL))


def test_a_different_seed_gives_a_different_head():
    """The equivalence checks above can fail: heads with another seed do not match."""
    x, targets = _data()
    train, test = np.arange(100), np.arange(100, 150)
    config = TrainConfig(epochs=5, **SMALL)
    a = train_heads(x, targets, [Job(HeadSpec(seed=0), train, {"test": test})], config)[0]
    b = train_one(x, targets, Job(HeadSpec(seed=1), train, {"test": test}), config)
    assert np.max(np.abs(a.predictions["test"]["mu"] - b.predictions["test"]["mu"])) > 1e-3


@pytest.mark.parametrize("selection,set_name", [("best-test", "test"), ("best-val", "val")])
def test_selection_picks_the_best_epoch_and_its_weights(selection, set_name):
    x, targets = _data(seed=5)
    train, val, test = np.arange(80), np.arange(80, 110), np.arange(110, 150)
    jobs = [Job(HeadSpec(seed=seed, loss=loss), train, {"test": test, "val": val})
            for seed in (0, 1) for loss in ("v1", "sup")]
    config = TrainConfig(epochs=15, selection=selection, track_curves=True, **{**SMALL, "lr": 1e-2})
    results = train_heads(x, targets, jobs, config)
    picked = set()
    for job, res in zip(jobs, results):
        curve = res.curves[f"{set_name}_spearman"]
        assert len(curve) == 15 and len(res.curves["train_loss"]) == 15
        assert res.selected_epoch == int(np.argmax(curve))
        picked.add(res.selected_epoch)
        # The evaluated weights are that epoch's: a fresh run stopped there predicts the same.
        stopped = train_one(x, targets, job, TrainConfig(epochs=res.selected_epoch + 1, **{**SMALL, "lr": 1e-2}))
        np.testing.assert_allclose(res.predictions["test"]["mu"], stopped.predictions["test"]["mu"], atol=1e-4)
        rho = spearman(targets[job.eval_rows[set_name]], res.predictions[set_name]["mu"])
        assert rho == pytest.approx(np.max(curve), abs=1e-6)
    assert picked != {14}  # the check means something only if some head peaked before the last epoch


def test_curves_record_loss_and_spearman_per_epoch():
    x, targets = _data(seed=6)
    train, test = np.arange(100), np.arange(100, 150)
    jobs = [Job(HeadSpec(seed=0, loss="sup"), train, {"test": test})]
    res = train_heads(x, targets, jobs, TrainConfig(epochs=20, track_curves=True, **SMALL))[0]
    loss = res.curves["train_loss"]
    assert loss.shape == (20,) and np.all(np.isfinite(loss))
    assert loss[-1] < 0.5 * loss[0]
    final = spearman(targets[test], res.predictions["test"]["mu"])
    assert res.curves["test_spearman"][-1] == pytest.approx(final, abs=1e-6)


def test_learned_nu_follows_heavy_tailed_targets():
    """NLL with a learned nu: targets with t(1.5) noise pull nu down from 5, Gaussian noise pushes it up."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    centre = 0.5 + 0.1 * x[:, 0]
    train, test = np.arange(300), np.arange(300, 400)
    nus = {}
    for name, noise in (("heavy", 0.02 * rng.standard_t(1.5, 400)), ("gaussian", 0.02 * rng.standard_normal(400))):
        job = Job(HeadSpec(seed=0, loss="nll", distribution="student-t:learned"), train, {"test": test})
        res = train_heads(x, (centre + noise).astype(np.float32), [job],
                          TrainConfig(epochs=60, hidden=(16, 8), lr=3e-3, batch_size=32))[0]
        nus[name] = res.distribution.params["nu"]
    assert nus["heavy"] < 4.0 < 5.0 < nus["gaussian"]


def test_features_are_not_modified_and_results_keep_job_order():
    x, targets = _data(seed=7)
    x_before = x.copy()
    train_a, train_b, test = np.arange(90), np.arange(60), np.arange(100, 150)
    jobs = [Job(HeadSpec(seed=0, loss="v1"), train_a, {"test": test}, tags={"i": 0}),
            Job(HeadSpec(seed=0, loss="v1", distribution="laplace"), train_a, {"test": test}, tags={"i": 1}),
            Job(HeadSpec(seed=0, loss="v1"), train_b, {"test": test}, tags={"i": 2})]
    results = train_heads(x, targets, jobs, TrainConfig(epochs=3, **SMALL))
    assert [r.job.tags["i"] for r in results] == [0, 1, 2]
    assert [r.distribution.name for r in results] == ["gaussian", "laplace", "gaussian"]
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.slow
def test_batched_matches_alone_on_real_unlv_dive(unlv_dive):
    """Real UNLV-Dive features (300 train / 70 test, 2048-d), full-batch steps: same predictions, same Spearman."""
    from dae.manifest import read_manifest
    from dae.features.store import align, read_features
    features, manifest = unlv_dive
    df = read_manifest(manifest)
    x = align(read_features(features), list(df["video_id"]))
    scores = df["score"].to_numpy(float)
    targets = (scores - 21.6) / (102.6 - 21.6)
    train, test = np.flatnonzero(df["split"] == "train"), np.flatnonzero(df["split"] == "test")
    torch.set_num_threads(2)
    config = TrainConfig(epochs=30, batch_size=1024, lr=2e-4)
    jobs = [Job(HeadSpec(seed=s, loss=loss), train, {"test": test}) for s in (0, 1) for loss in ("v1", "nll")]
    batched = train_heads(x, targets, jobs, config)
    rhos = []
    for job, res in zip(jobs, batched):
        alone = train_one(x, targets, job, config)
        assert np.max(np.abs(res.predictions["test"]["mu"] - alone.predictions["test"]["mu"])) <= 1e-3
        rhos.append((spearman(scores[test], res.predictions["test"]["mu"]),
                     spearman(scores[test], alone.predictions["test"]["mu"])))
    rhos = np.array(rhos)
    assert abs(rhos[:, 0].mean() - rhos[:, 1].mean()) < 0.01 and rhos.min() > 0.75


def test_device_must_exist():
    from dae.errors import UsageError

    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:I"):
        TrainConfig(device="abacus").check()
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            TrainConfig(device="cuda").check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_batched_heads_on_gpu_match_training_alone_on_cpu():
    x, targets = _data(seed=8)
    train, test = np.arange(100), np.arange(100, 150)
    jobs = [Job(HeadSpec(seed=s, loss=loss), train, {"test": test}) for s in (0, 1) for loss in ("v1", "nll")]
    gpu = train_heads(x, targets, jobs, TrainConfig(epochs=8, device="cuda", **SMALL))
    for job, res in zip(jobs, gpu):
        alone = train_one(x, targets, job, TrainConfig(epochs=8, **SMALL))
        assert np.max(np.abs(res.predictions["test"]["mu"] - alone.predictions["test"]["mu"])) <= 1e-3


def test_a_diverging_model_fails_alone_and_the_others_are_untouched():
    """A model whose training loss overflows is marked failed; a model stacked beside it ends as if alone."""
    x, targets = _data()
    x = x.copy()
    x[5] = 3e38  # overflows in the first layer: only models that train on row 5 see it
    config = TrainConfig(epochs=4, **SMALL)
    bad = Job(HeadSpec(seed=0), np.arange(0, 100), {"test": np.arange(100, 150)})
    good = Job(HeadSpec(seed=0), np.arange(10, 110), {"test": np.arange(110, 150)})
    res_bad, res_good = train_heads(x, targets, [bad, good], config)
    assert "non-finite training loss" in res_bad.failure
    assert res_good.failure == ""
    alone = train_heads(x, targets, [good], config)[0]
    np.testing.assert_allclose(res_good.predictions["test"]["mu"], alone.predictions["test"]["mu"], rtol=1e-5)


def test_best_val_never_restores_untrained_weights():
    """A one-video validation set: its Spearman is NaN every epoch; the last epoch is kept and said so."""
    x, targets = _data()
    train, test = np.arange(100), np.arange(100, 150)
    config = TrainConfig(epochs=5, **SMALL)
    selected = train_heads(x, targets, [Job(HeadSpec(seed=2), train, {"test": test, "val": np.array([120])})],
                           TrainConfig(epochs=5, selection="best-val", **SMALL))[0]
    last = train_heads(x, targets, [Job(HeadSpec(seed=2), train, {"test": test})], config)[0]
    assert selected.selection_note and "last epoch is kept" in selected.selection_note
    assert selected.selected_epoch == 4
    assert np.array_equal(selected.predictions["test"]["mu"], last.predictions["test"]["mu"])


def test_jobs_with_equal_training_size_but_different_sets_keep_each_their_own_sets():
    """A CV+ fold job (sets 'calibration' and 'test') can have as many training rows as another window's main job
    (set 'test' only); both land in one run of the trainer. Seen on JIGSAWS: the fold job lost its calibration set."""
    x, targets = _data(seed=3)
    main = Job(HeadSpec(seed=0), np.arange(0, 80), {"test": np.arange(80, 100)})
    fold = Job(HeadSpec(seed=0), np.arange(20, 100), {"calibration": np.arange(0, 20), "test": np.arange(100, 150)})
    a, b = train_heads(x, targets, [main, fold], TrainConfig(epochs=3, **SMALL))
    assert set(a.predictions) == {"test"} and len(a.predictions["test"]["mu"]) == 20
    assert set(b.predictions) == {"calibration", "test"}
    assert len(b.predictions["calibration"]["mu"]) == 20 and len(b.predictions["test"]["mu"]) == 50


def test_progress_reports_each_stacks_share_of_the_work_weighed_by_models_and_batches():
    """Two stacks that cost differently (2 models x 5 batches, then 10 models x 4 batches, as CV+'s fold stack
    beside the main one): the work reported after the first stack is its share, 10 / 50, not half the epochs."""
    from dae.heads.trainer import stack_costs, train

    from dae.heads.dae import DAE

    x, targets = _data()
    main = [Job(HeadSpec(seed=s), np.arange(40), {"test": np.arange(100, 150)}) for s in (0, 1)]
    folds = [Job(HeadSpec(seed=s % 2), np.arange(s, s + 32), {"test": np.arange(100, 150)}) for s in range(10)]
    assert stack_costs([[40, 40], [32] * 10], 8) == pytest.approx([0.2, 0.8])
    calls = []
    train(DAE(x, targets), main + folds, TrainConfig(epochs=3, hidden=(16, 8), batch_size=8),
          progress=lambda *args: calls.append(args))
    assert [c[:2] for c in calls] == [(e, 6) for e in range(1, 7)] and all(c[3] == 2 for c in calls)
    work = [c[4] for c in calls]
    assert work == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0])
