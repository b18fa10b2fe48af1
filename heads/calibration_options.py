"""The calibrators' names and defaults, torch-free (the CLI builds --calibrate from them without importing torch)."""
from __future__ import annotations

import math

INTERVAL_LEVELS = (0.5, 0.8, 0.9, 0.95)  # the central intervals every model reports (coverage50 ... coverage95)
CALIBRATORS = ("none", "scale", "conformal")
DEFAULT_CALIBRATOR = "conformal"
DEFAULT_FOLDS = 5
# The fewest calibration residuals for which CV+ / split conformal gives a finite interval at every level:
# ceil(0.95 (n + 1)) <= n  <=>  n >= 19.
MIN_CALIBRATION_ROWS = next(n for n in range(1, 10_000) if math.ceil(max(INTERVAL_LEVELS) * (n + 1) - 1e-9) <= n)
