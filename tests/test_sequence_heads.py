"""Sequence heads (attn-dae, gdlt, gdlt-dae) as stacked models: crops, masks, stacking, GDLT's scorer and triplet."""
import numpy as np
import pytest
import torch

from dae.heads.dae import DAEHead
from dae.heads.sequence.models import (ClipBank, SequenceOptions, StackedAttnDAE, StackedGDLT, build_model,
                                hardest_triplet_loss, predict_full)

SMALL = SequenceOptions(crop=5, hidden=16, heads=2, encoder_layers=1, decoder_layers=2, queries=4, dropout=0.0)


def _bank(lengths=(3, 9, 1, 12), dim=8, seed=0):
    rng = np.random.default_rng(seed)
    clips = rng.normal(size=(sum(lengths), dim)).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return ClipBank(clips, starts, lengths), clips, starts


def test_crops_are_windows_of_each_video_and_masked_when_short():
    bank, clips, starts = _bank()
    rows = torch.tensor([[0, 1, 2, 3], [3, 3, 1, 0]])
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    x, mask = bank.crops(rows, gens, crop=5)
    assert x.shape == (2, 4, 5, 8) and mask.shape == (2, 4, 5)
    for m in range(2):
        for j, r in enumerate(rows[m].tolist()):
            t = int(bank.lengths[r])
            n = min(t, 5)
            assert mask[m, j].sum() == n
            window = x[m, j, :n].numpy()
            video = clips[starts[r]:starts[r] + t]
            assert any(np.array_equal(window, video[s:s + n]) for s in range(t - n + 1))
    # each model's crops come from its own generator: same seed, same crops, whatever the other models
    x0, _ = bank.crops(rows[:1], [torch.Generator().manual_seed(0)], crop=5)
    assert torch.equal(x0[0], x[0])


def test_crop_starts_cover_every_valid_window():
    bank, clips, starts = _bank(lengths=(7,))
    gen = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(200):
        x, _ = bank.crops(torch.zeros(1, 1, dtype=torch.long), [gen], crop=5)
        seen.add(int(np.flatnonzero((clips == x[0, 0, 0].numpy()).all(1))[0]))
    assert seen == {0, 1, 2}  # 7 clips, windows of 5: starts 0, 1, 2 (GDLT's randint would never pick 2)


@pytest.mark.parametrize("head", ["attn-dae", "gdlt", "gdlt-dae"])
def test_padding_does_not_change_a_video_s_output(head):
    torch.manual_seed(0)
    model = build_model(head, [0, 1], 8, SMALL, dae_hidden=(16, 8)).eval()
    bank, _, _ = _bank()
    alone = predict_full(model, bank, torch.tensor([[2], [2]]))         # the 1-clip video alone: no padding
    padded = predict_full(model, bank, torch.tensor([[2, 3], [3, 2]]))   # beside a 12-clip video: 11 padded
    torch.testing.assert_close(padded["mu"][0, 0], alone["mu"][0, 0])
    torch.testing.assert_close(padded["mu"][1, 1], alone["mu"][1, 0])


@pytest.mark.parametrize("head", ["attn-dae", "gdlt", "gdlt-dae"])
def test_a_stacked_model_equals_the_same_seed_alone(head):
    bank, _, _ = _bank()
    stacked = build_model(head, [5, 7, 9], 8, SMALL, dae_hidden=(16, 8)).eval()
    alone = build_model(head, [7], 8, SMALL, dae_hidden=(16, 8)).eval()
    rows = torch.tensor([[0, 1, 2, 3]] * 3)
    torch.testing.assert_close(predict_full(stacked, bank, rows)["mu"][1], predict_full(alone, bank, rows[:1])["mu"][0])
    # and one optimiser-free training forward with the same crops gives the same loss gradient for that model
    stacked.train(), alone.train()
    x, mask = bank.crops(rows, [torch.Generator().manual_seed(1)] * 3, crop=5)
    out_s, out_a = stacked(x, mask), alone(x[1:2], mask[1:2])
    torch.testing.assert_close(out_s["mu"][1], out_a["mu"][0])


def test_attn_dae_starts_as_the_dae_on_the_mean():
    bank, clips, starts = _bank()
    model = StackedAttnDAE([4], 8, hidden=(16, 8)).eval()
    out = predict_full(model, bank, torch.tensor([[0, 1, 2, 3]]))
    means = torch.stack([torch.as_tensor(clips[s:s + t].mean(0)) for s, t in zip(starts, bank.lengths.tolist())])
    mu, log_var = DAEHead(8, (16, 8), seed=4)(means)
    torch.testing.assert_close(out["mu"][0], mu)
    torch.testing.assert_close(out["log_var"][0], log_var)


def test_gdlt_score_is_a_likert_weighted_grade():
    model = StackedGDLT([0], 8, SMALL).eval()
    bank, _, _ = _bank()
    x, mask = bank.full(torch.tensor([[0, 1, 3]]))
    out = model(x, mask)
    assert out["embed"].shape == (1, 3, 4, 16)
    assert ((out["mu"] > 0) & (out["mu"] < 1)).all()
    q = out["embed"][0]
    s = torch.stack([q[:, i] @ model.regressor.weight[0, :, i] + model.regressor.bias[0, 0, i] for i in range(4)], 1)
    p = torch.sigmoid(s) / torch.sigmoid(s).sum(1, keepdim=True)
    torch.testing.assert_close(out["mu"][0], p @ torch.linspace(0, 1, 4))


def test_hardest_triplet_loss_matches_a_brute_force_reading():
    torch.manual_seed(0)
    embed = torch.randn(2, 3, 4, 5)
    loss = hardest_triplet_loss(embed, margin=1.0)
    for m in range(2):
        e = torch.nn.functional.normalize(embed[m].reshape(12, 5), dim=-1)
        labels = [i % 4 for i in range(12)]
        values = []
        for a in range(12):
            d = 1 - e @ e[a]
            pos = max(float(d[p]) for p in range(12) if p != a and labels[p] == labels[a])
            neg = min(float(d[n]) for n in range(12) if labels[n] != labels[a])
            values.append(max(pos - neg + 1.0, 0.0))
        assert float(loss[m]) == pytest.approx(np.mean(values), abs=1e-6)


def test_masked_batch_norm_ignores_padding_in_training():
    from dae.heads.sequence.layers import MaskedBatchNorm

    bn = MaskedBatchNorm(1, 3).train()
    x = torch.randn(1, 2, 4, 3)
    mask = torch.tensor([[[True, True, False, False], [True, True, True, False]]])
    garbage = x.clone()
    garbage[~mask] = 1e6
    torch.testing.assert_close(bn(x, mask)[mask], MaskedBatchNorm(1, 3).train()(garbage, mask)[mask])


@pytest.mark.parametrize("head", ["gdlt", "gdlt-dae"])
def test_stacked_sequence_models_train_as_alone_with_gdlts_sgd_and_cosine(head, one_thread):
    """GDLT's optimisation (SGD, momentum 0.9, weight decay 1e-4, cosine to 1e-2 x lr per epoch) with dropout on:
    two seeds trained stacked end where each ends trained alone (the trainer's invariant)."""
    from dae.heads.sequence.models import SequenceHead
    from dae.heads.trainer import HeadSpec, Job, TrainConfig, train

    rng = np.random.default_rng(3)
    lengths = rng.integers(3, 12, 24)
    clips = rng.normal(size=(int(lengths.sum()), 8)).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    targets = rng.uniform(0, 1, 24).astype(np.float32)
    options = SequenceOptions(crop=5, hidden=16, heads=2, encoder_layers=1, decoder_layers=2, queries=4, dropout=0.3,
                              triplet_weight=0.5)
    config = TrainConfig(epochs=4, lr=1e-2, batch_size=6, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                         schedule="cosine", eta_min=0.01, hidden=(16, 8))
    train_rows, test_rows = np.arange(18), np.arange(18, 24)

    def fit(seeds):
        jobs = [Job(HeadSpec(seed=s, loss="v1"), train_rows, {"test": test_rows}) for s in seeds]
        return train(SequenceHead(head, clips, starts, lengths, targets, options), jobs, config)

    stacked, alone = fit([4, 9]), fit([9])
    np.testing.assert_allclose(stacked[1].predictions["test"]["mu"], alone[0].predictions["test"]["mu"],
                               rtol=1e-4, atol=1e-5)
    assert np.abs(stacked[0].predictions["test"]["mu"] - stacked[1].predictions["test"]["mu"]).max() > 1e-4
