"""The pipeline's head names and the defaults of its studies: plain data, no torch import (the CLI builds its
options from them)."""
from dae.heads.sequence_options import SEQUENCE_HEADS

HEADS = ("dae", "mlp", "ridge", "usdl", "musdl", "dae-mt", "dae-judges", "core", "dae-core") + SEQUENCE_HEADS
EXEMPLAR_HEADS = ("core", "dae-core")
STUDY_HEADS = ("dae", "dae-core")  # heads a study's grid can train (dae-core: Gaussian only)
AVERAGES = ("fisher-z", "mean")  # how folds' Spearman values are averaged in summaries

# Studies train with much larger batches than `dae fit` (32): fewer, fuller optimizer steps. On a 2-core CPU the
# default loss study (30 heads, 100 epochs, 1059 x 1024 training features) takes 13.9 s at 1024 (`dae bench fit`,
# quiet machine; 13.0 s at full batch, ~18 s at 256 under load); the first layer's matmuls set the floor (~8 s at
# the mm peak). The learning rate grows less than the batch: 2e-4 keeps the NLL loss stable (at 4e-4 its sigma
# saturates at the bound for some seeds on UNLV-Dive and its ranking swings). Mean test Spearman over 5 seeds, v1
# loss: UNLV-Dive (300 train videos, one full batch per epoch) 0.848 against 0.819 with fit's defaults; MTL-AQA-sized
# synthetic features (`dae demo`'s generator) 0.958 at 1024 and 0.957 at 512 against 0.946 at 32.
STUDY_BATCH_SIZE = 1024
STUDY_LR = 2e-4
STUDY_SEEDS = 5
