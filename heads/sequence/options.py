"""Sequence-head settings and names, torch-free (the CLI builds its options from these defaults quickly)."""
from __future__ import annotations

from dataclasses import dataclass

from dae.errors import UsageError



# cofinal's grade values (CoFInAl_AQA models/model.py:84-95 choose_activate, by --activate_regular_restrictions): "arcl1"
# (3, its default) [-1, -0.8, 0.8, 1] and, for int_revert, their flip; "sigmoid" (2, the RG Ball and Hoop commands)
# [0.1, 0.2, 0.8, 1] and [1, 1, -1, -1]
GRADE_VALUES = ("arcl1", "sigmoid")
# cofinal's triplet labels (models/loss.py:39-46 choose_align, by --loss_align): "slot" (1, its default; 0 is the same
# partition) each query slot one label shared by the videos of a batch; "query" (2, the RG Hoop command) every query of
# every video of the batch a label of its own
TRIPLET_LABELS = ("slot", "query")


@dataclass(frozen=True)
class SequenceOptions:
    """A sequence head's settings. The defaults are GDLT's Rhythmic Gymnastics command (xuangch/CVPR22_GDLT
    README.md:25 and options.py), not its Fis-V recipe (clip 124, dropout 0.7, alpha 0.5: `--recipe gdlt:fis-v-tes`;
    heads/recipes/gdlt.toml)."""

    crop: int = 68              # --clip-num (RG; Fis-V 124)
    hidden: int = 256           # --hidden_dim
    heads: int = 1              # --n_head
    encoder_layers: int = 1     # --n_encoder
    decoder_layers: int = 2     # --n_decoder 2 in the README's command (options.py: 1)
    queries: int = 4            # --n_query 4 in the README's command (grades)
    dropout: float = 0.3        # --dropout 0.3 in the README's (RG) command; Fis-V 0.7
    triplet_weight: float = 1.0  # --alpha 1.0 (RG; Fis-V 0.5)
    margin: float = 1.0         # --margin 1.0
    grade_values: str = "arcl1"  # cofinal only: CoFInAl's --activate_regular_restrictions (3; GRADE_VALUES)
    triplet_labels: str = "slot"  # cofinal only: CoFInAl's --loss_align (1; TRIPLET_LABELS)
    eval_chunk: int = 32        # videos per evaluation forward (memory bound only)

    def check(self) -> None:
        if self.crop < 1 or self.hidden < 1 or self.heads < 1 or self.queries < 1 or self.encoder_layers < 0 \
                or self.decoder_layers < 1 or not 0 <= self.dropout < 1 or self.triplet_weight < 0:
            raise UsageError("sequence head options: --crop, --model-width, --attention-heads, --queries, "
                             "--decoder-layers >= 1, --encoder-layers >= 0, 0 <= --dropout < 1, --triplet-weight >= 0")
        if self.grade_values not in GRADE_VALUES or self.triplet_labels not in TRIPLET_LABELS:
            raise UsageError(f"--grade-values must be one of {', '.join(GRADE_VALUES)} and --triplet-labels one of "
                             f"{', '.join(TRIPLET_LABELS)} (got {self.grade_values!r}, {self.triplet_labels!r})")
        if self.hidden % self.heads:  # the options by the names `dae fit` takes them (hidden is --model-width)
            raise UsageError(f"--model-width {self.hidden} must be divisible by --attention-heads {self.heads}")

# Training budget of the sequence heads in `dae ablate pooling` (Adam, the project's trainer). GDLT's own recipe is
# SGD (momentum 0.9, weight decay 1e-4) at lr 1e-2 with cosine decay for 250-500 epochs; one GDLT epoch on Fis-V's
# 320 training videos of a fold costs ~200 GFLOP per model, so that recipe takes hours for 15 models on 2 CPU cores.
SEQUENCE_EPOCHS = 30
SEQUENCE_LR = 5e-4
