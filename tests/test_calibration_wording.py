"""The calibration study's figure labels say what the calibrator computes (heads/calibration.py, label conformal-cv):
an interval centred on mu from out-of-fold normalised residuals, not CV+ (whose ends are centred on the fold models).
The printed study text is checked on a real run in tests/test_calibration.py."""
from __future__ import annotations

from dae.heads.calibration import Calibration
from dae.pipeline.studies import calibration_plots


def test_no_figure_label_calls_the_calibrator_cv_plus():
    assert not any("CV+" in label for _, label in calibration_plots.METHOD_STYLE.values())
    assert calibration_plots.METHOD_STYLE["conformal"][1] == "conformal, adaptive (|y - mu| / sigma)"


def test_the_leaderboard_label_of_the_conformal_calibrator_is_conformal_cv():
    assert Calibration("conformal", folds=5, seed=0).label().startswith("conformal-cv:")
