"""CoFInAl's recipe details as its authors' code has them (ZhouKanglei/CoFInAl_AQA @ fe1f4c1), beyond the parity
fixtures: how a score becomes its grade targets, the RG commands' grade values and triplet labels, and the recipes
that cannot follow their source.

Grade targets. The original's label is `score / 25` in Python floats (datasets.py:59), collated to float64, cast
by `label.float()` (train.py:20), then `get_proj_class` (models/model.py:208-212): g = (label * 10000).long(), a
float32 product truncated toward zero; g1 = (g // 100) / 100; g2 = g - g // 100 * 100. The fixtures' six targets
give the same g rounded or truncated, so they cannot tell the two apart; 39 of Fis-V's 500 TES scores can: e.g.
28.71 / 25 = 1.1484 is 11483.999 in float32 x 10000, class 83 truncated (the original) and 84 rounded.
"""
import numpy as np
import torch

# Fis-V TES scores (../shared/data/labels/fisv.csv) whose float32 grade product sits just below an integer (the
# original truncates it: one class lower than rounding), and 29.61 (fixture video 483), whose float64 product is
# 11843.99... but float32 gives exactly 11844 (the original's class 44, as its fixture records).
TES = np.array([28.71, 30.38, 36.45, 32.23, 29.59, 29.61])
ORIGINAL_G = np.array([11483, 12151, 14579, 12891, 11835, 11844])  # int() of the float32 product, as the original


def _targets_as_fit_makes_them(scores):
    """dae fit's targets at --target-scale divide:25 (pipeline/fit.py: (score - 0) / (25 - 0), float64)."""
    return (np.asarray(scores, float) - 0.0) / (25.0 - 0.0)


def test_grade_targets_truncate_the_float32_product_as_the_original():
    from dae.heads.sequence.cofinal import CoFInAlHead, etf_basis, grade_targets

    y = _targets_as_fit_makes_them(TES)
    # the head keeps its targets as float32, as the original's label.float() (train.py:20)
    clips = np.zeros((len(y) * 2, 8), np.float32)
    head = CoFInAlHead("cofinal", clips, np.arange(len(y)) * 2, np.full(len(y), 2), y)
    etf = etf_basis(torch.Generator().manual_seed(0)).unsqueeze(0)
    g1, g2, picked = grade_targets(head.g.unsqueeze(0), etf)
    # where truncation and rounding differ (all but the last), the original's classes are the truncated ones
    rounded = np.round(head.g.numpy() * np.float32(10000)).astype(int)
    assert (rounded[:-1] != ORIGINAL_G[:-1]).all()
    assert g2[0].tolist() == (ORIGINAL_G % 100).tolist()
    assert g1[0].tolist() == torch.tensor(ORIGINAL_G // 100).div(100).tolist()
    assert torch.equal(picked[0], etf[0][:, g2[0]].t())
