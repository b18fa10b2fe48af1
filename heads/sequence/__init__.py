"""Heads on clip sequences (attn-dae, GDLT, gdlt-dae, CoFInAl, cofinal-dae): stacked temporal layers, the models, their
fitters and their torch-free options. Importing this package imports no torch (the CLI reads `options`)."""
