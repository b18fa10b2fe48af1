"""Heads on one pooled feature per video (dae, mlp, ridge): the standardised feature copies, closed-form ridge and the
fitters."""
