"""The calibration study's words say what the calibrator computes (heads/calibration.py, label conformal-cv): an
interval centred on mu from out-of-fold normalised residuals, not CV+ (whose ends are centred on the fold models)."""
from __future__ import annotations

import inspect

from dae.heads import calibration
from dae.pipeline.studies import calibration as calibration_study, calibration_plots


def test_no_study_text_or_figure_label_calls_the_calibrator_cv_plus():
    assert not any("CV+" in label for _, label in calibration_plots.METHOD_STYLE.values())
    assert "CV+" not in inspect.getsource(calibration_study)
    assert "conformal-cv" in inspect.getsource(calibration_study.format_calibration_study)
    assert calibration_plots.METHOD_STYLE["conformal"][1] == "conformal, adaptive (|y - mu| / sigma)"
    assert "conformal-cv" in inspect.getsource(calibration.Calibration.label)  # the name the text now uses
