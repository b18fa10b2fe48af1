"""Which `dae fit` options each head reads, torch-free: an option given explicitly to a head that ignores it is a
usage error, not a setting silently recorded beside rows it never shaped."""
from __future__ import annotations

from dae.errors import UsageError
from dae.heads.sequence_options import SEQUENCE_HEADS

_LOSS = ("loss", "reparam", "alpha", "beta")
_TRAINING = ("epochs", "lr", "weight_decay", "batch_size")
_SEQUENCE = ("crop", "attention_heads", "queries", "encoder_layers", "decoder_layers", "hidden", "dropout",
             "triplet_weight", "margin")

# option -> the heads that read it (None: every head but those in IGNORED_BY)
READ_BY = {
    "voters": ("core", "dae-core"), "with_dd": ("core", "dae-core"),
    "bins": ("usdl", "musdl"), "bin_std": ("usdl", "musdl"), "bin_predict": ("usdl", "musdl"),
    "judge_rule": ("musdl", "dae-judges"),
    **{name: SEQUENCE_HEADS for name in _SEQUENCE},
}
# head -> options it ignores although other heads read them, and why
IGNORED_BY = {
    "ridge": (_LOSS + ("prediction",) + _TRAINING, "closed-form ridge has no loss, sampling or epochs"),
    "mlp": (_LOSS + ("prediction",), "mlp regresses mu with the supervised loss alone, no spread to sample"),
    "core": (_LOSS, "core trains CoRe's tree loss (tree-nll+mse)"),
    "gdlt": (_LOSS, "gdlt trains GDLT's mse + triplet loss"),
    "attn-dae": (("triplet_weight", "margin"), "attn-dae has no grade queries, so no triplet loss"),
}
OPTION_NAMES = {"with_dd": "--with-dd/--without-dd", "prediction": "--predict", "hidden": "--model-width",
                "batch_size": "--batch-size", "weight_decay": "--weight-decay", "bin_std": "--bin-std",
                "bin_predict": "--bin-predict", "judge_rule": "--judge-rule", "attention_heads": "--attention-heads",
                "encoder_layers": "--encoder-layers", "decoder_layers": "--decoder-layers",
                "triplet_weight": "--triplet-weight"}


def option_flag(name: str) -> str:
    return OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def ignored_options(head: str, given) -> list[str]:
    """The options in `given` (parameter names) that `head` ignores, in the order given."""
    ignored, _ = IGNORED_BY.get(head, ((), ""))
    return [name for name in given
            if name in ignored or (name in READ_BY and head not in READ_BY[name])]


def refuse_ignored_options(head: str, given) -> None:
    """A one-line usage error naming every explicitly given option that `head` does not read."""
    names = ignored_options(head, given)
    if not names:
        return
    own, why = IGNORED_BY.get(head, ((), ""))
    reasons = [why] if any(n in own for n in names) else []
    for name in names:
        if name not in own:
            reasons.append(f"{option_flag(name)}: read by {', '.join(READ_BY[name])} only")
    raise UsageError(f"head {head} ignores {', '.join(option_flag(n) for n in names)} ({'; '.join(reasons)}): "
                     f"leave {'it' if len(names) == 1 else 'them'} out")
