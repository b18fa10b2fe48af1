"""`dae ablate ...`: the studies (losses, distributions, reparameterisation, variance, robustness, calibration, voters,
pooling) and the grids that run their cells."""
