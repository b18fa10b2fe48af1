"""Which `dae fit` options each head reads, torch-free: an option given explicitly to a head that ignores it is a
usage error, not a setting silently recorded beside rows it never shaped.

HEAD_READS names, for every registered head, the groups of head-specific options its code reads, derived from the
head's capabilities in the registry (`dae.heads.registry.Head`; adding a head adds no line here); what it leaves
out it ignores, for the reason IGNORED_WHY gives. Options outside HEAD_OPTIONS (inputs, seeds, dataset, recipe,
calibration, outputs) apply to every head. Read from the code:
- the DAE loss (--loss/--reparam/--alpha/--beta) and --predict: the heads that train the DAE objective
  (`dae_objective`: dae, dae-mt, dae-judges, dae-core, attn-dae, gdlt-dae, cofinal-dae); mlp trains `sup` whatever
  --loss says (registry fixed_loss) and predicts a point; usdl/musdl train a KL over bins and predict by
  --bin-predict; core, gdlt and cofinal train their own losses (tree-nll+mse, mse+triplet, CoFInAl's) and predict a
  point.
- the trainer (--epochs, --lr, ..., --selection) and its optimizer and schedule (--optimizer ... --accumulate):
  every head the stacked trainer trains (heads/trainer.py, heads/epochs.py), i.e. all but the `closed_form` ridge
  (its penalty by cross-validation).
- --target-scale: the heads that regress the normalised score (dae, mlp, the sequence heads). Ridge's predictions
  are linear in the targets, so a rescaling changes nothing; the `own_scale` heads (usdl/musdl/dae-mt/dae-judges/
  core/dae-core) map scores through their own bins, judges or exemplars (fit_plan refuses a non-default value from a
  recipe too).
- voters, --with-dd: the `exemplar` heads core, dae-core (heads/contrastive/fitters.py). --bins: usdl (musdl's bins
  are the judges' own scale); --bin-std, --bin-predict: the `score_bins` heads usdl, musdl; --judge-rule: the heads
  that need judges, musdl, dae-judges (heads/multipath/fitters.py).
- the sequence options: the heads with a `backbone` (gdlt, gdlt-dae, cofinal, cofinal-dae) read every one
  (heads/sequence/models.py StackedGDLT, heads/sequence/cofinal.py); attn-dae reads --crop only (its attention is one
  linear score per clip into the DAE MLP: no encoder, decoder, grade queries, width, dropout or triplet loss).
- --grade-values, --triplet-labels (CoFInAl's --activate_regular_restrictions and --loss_align): the heads on
  CoFInAl's backbone, cofinal, cofinal-dae (heads/sequence/cofinal.py); gdlt's grade values and triplet labels are
  fixed (GDLT's).
"""
from __future__ import annotations

from dae.errors import UsageError
from dae.heads.registry import HEADS

GROUPS = {
    "loss": ("loss", "reparam", "alpha", "beta"),
    "prediction": ("prediction",),
    "training": ("epochs", "lr", "weight_decay", "batch_size", "selection"),
    "optimizer": ("optimizer", "momentum", "nesterov", "schedule", "eta_min", "warmup_epochs", "accumulate"),
    "target_scale": ("target_scale",),
    "exemplars": ("voters", "with_dd"),
    "bins": ("bins",),
    "bin_options": ("bin_std", "bin_predict"),
    "judges": ("judge_rule",),
    "crop": ("crop",),
    "backbone": ("attention_heads", "queries", "encoder_layers", "decoder_layers", "hidden", "dropout",
                 "triplet_weight", "margin"),
    "cofinal": ("grade_values", "triplet_labels"),
}
HEAD_OPTIONS = tuple(name for names in GROUPS.values() for name in names)


def groups_read(head) -> tuple:
    """The option groups a registered head (`dae.heads.registry.Head`) reads, from its capabilities (module
    docstring): the DAE objective's loss and prediction, the trainer's options unless closed form, --target-scale
    where it regresses the normalised score, the exemplars', the score bins' (--bins where the judges' scale does not
    fix them), the judges', a sequence head's crop and its backbone method's options."""
    groups = []
    if head.dae_objective:
        groups += ["loss", "prediction"]
    if not head.closed_form:
        groups += ["training", "optimizer"] + ([] if head.own_scale else ["target_scale"])
    if head.exemplar:
        groups.append("exemplars")
    if head.score_bins:
        groups += (["bins"] if "judges" not in head.needs else []) + ["bin_options"]
    if "judges" in head.needs:
        groups.append("judges")
    if head.inputs == "sequence":
        groups.append("crop")
    if head.backbone:
        groups.append("backbone")
    if head.backbone == "cofinal":  # CoFInAl's own options (its grade values and triplet labels)
        groups.append("cofinal")
    return tuple(groups)


# head -> the option groups it reads, for every head of dae.heads.registry.HEADS in its order
HEAD_READS = {name: groups_read(head) for name, head in HEADS.items()}
# (head, group) -> why the head ignores the group; a group not named here: "read by HEADS only"
IGNORED_WHY = {
    **{("ridge", g): "closed-form ridge has no loss, sampling, epochs or optimizer"
       for g in ("loss", "prediction", "training", "optimizer")},
    ("ridge", "target_scale"): "ridge's predictions are linear in the targets: a rescaling changes nothing",
    ("mlp", "loss"): "mlp regresses mu with the supervised loss alone",
    ("mlp", "prediction"): "mlp predicts a point, no spread to sample",
    **{(h, "loss"): f"{h} trains a KL loss over score bins" for h in HEADS if HEADS[h].score_bins},
    **{(h, "prediction"): f"{h} predicts from its bins (--bin-predict)" for h in HEADS if HEADS[h].score_bins},
    ("core", "loss"): "core trains CoRe's tree loss (tree-nll+mse)",
    ("core", "prediction"): "core predicts a point (its tree's argmax leaf)",
    ("gdlt", "loss"): "gdlt trains GDLT's mse + triplet loss",
    ("gdlt", "prediction"): "gdlt predicts a point (its Likert score)",
    ("cofinal", "loss"): "cofinal trains CoFInAl's own loss",
    ("cofinal", "prediction"): "cofinal predicts a point (its fine grade)",
    ("attn-dae", "backbone"): "attn-dae pools clips by one linear attention score into the DAE: no encoder, "
                              "decoder, grade queries, width, dropout or triplet loss",
    **{(h, "cofinal"): f"{h} has GDLT's grade values linspace(0, 1, Q) and one triplet label per query slot "
                       "(CoFInAl's choices are cofinal's)" for h in HEADS if HEADS[h].backbone == "gdlt"},
    **{(h, "target_scale"): f"{h} maps scores through its own bins, judges or exemplars"
       for h in HEADS if HEADS[h].own_scale},
}
OPTION_NAMES = {"with_dd": "--with-dd/--without-dd", "prediction": "--predict", "hidden": "--model-width",
                "batch_size": "--batch-size", "weight_decay": "--weight-decay", "bin_std": "--bin-std",
                "bin_predict": "--bin-predict", "judge_rule": "--judge-rule", "attention_heads": "--attention-heads",
                "encoder_layers": "--encoder-layers", "decoder_layers": "--decoder-layers",
                "triplet_weight": "--triplet-weight", "eta_min": "--eta-min", "warmup_epochs": "--warmup-epochs",
                "target_scale": "--target-scale", "nesterov": "--nesterov/--no-nesterov"}
_GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


def option_flag(name: str) -> str:
    return OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def reads(head: str, name: str) -> bool:
    """Whether `head` reads option `name` (parameter name); options that are not head-specific: True."""
    group = _GROUP_OF.get(name)
    return group is None or group in HEAD_READS.get(head, tuple(GROUPS))


def readers(name: str) -> list[str]:
    """The heads that read head-specific option `name`."""
    return [h for h in HEAD_READS if reads(h, name)]


def ignored_options(head: str, given) -> list[str]:
    """The options in `given` (parameter names) that `head` ignores, in the order given."""
    return [name for name in given if not reads(head, name)]


def refuse_ignored_options(head: str, given) -> None:
    """A one-line usage error naming every explicitly given option that `head` does not read, and why."""
    names = ignored_options(head, given)
    if not names:
        return
    reasons = []
    for name in names:
        group = _GROUP_OF[name]
        why = IGNORED_WHY.get((head, group)) or f"{option_flag(name)}: read by {', '.join(readers(name))} only"
        if why not in reasons:
            reasons.append(why)
    raise UsageError(f"head {head} ignores {', '.join(option_flag(n) for n in names)} ({'; '.join(reasons)}): "
                     f"leave {'it' if len(names) == 1 else 'them'} out")
