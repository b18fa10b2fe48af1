"""The clip-sequence heads of `dae fit` (attn-dae, gdlt, gdlt-dae, cofinal, cofinal-dae): their fitter and the
rebuilder `dae predict` scores saved models with, named by the registry (`dae.heads.registry`). The clips come in
aligned to the manifest (`FitInputs.sequences`, read from the feature file by the pipeline): arrays in."""
from __future__ import annotations

import numpy as np
import torch

from dae.heads.registry import POOLING
from dae.heads.sequence.options import SequenceOptions
from dae.heads.trainer import train


def fit_sequence_jobs(inputs):
    """attn-dae / gdlt / gdlt-dae / cofinal / cofinal-dae on the file's clip sequences (schema 2), in the manifest's
    order: inputs (a `dae.heads.registry.FitInputs`) carries them as sequences = (clips, starts, lengths)."""
    from dae.heads.sequence.cofinal import COFINAL_HEADS, COFINAL_LOSS, CoFInAlHead
    from dae.heads.sequence.models import SequenceHead

    targets, jobs, config, plan = inputs.targets, inputs.jobs, inputs.config, inputs.plan
    options = plan.head_options if isinstance(plan.head_options, SequenceOptions) else SequenceOptions()
    clips, starts, lengths = inputs.sequences
    objective = (CoFInAlHead if plan.head in COFINAL_HEADS else SequenceHead)(
        plan.head, clips, starts, lengths, targets, options, config.prediction)  # checks the options first
    inputs.announce()
    results = train(objective, jobs, config, inputs.progress)
    loss = {"gdlt": "mse+triplet", "gdlt-dae": f"{plan.specs[0].loss}+triplet", "cofinal": COFINAL_LOSS,
            "cofinal-dae": f"{COFINAL_LOSS}+{plan.specs[0].loss}"}.get(plan.head)
    labels = {"pooling": POOLING[plan.head], "crop": options.crop}
    if plan.head != "attn-dae":
        labels.update(queries=options.queries, attention_heads=options.heads, triplet_weight=options.triplet_weight)
    return results, {**labels, **({"loss": loss} if loss else {})}


def sequence_outputs(blob: dict, weights: dict, x: torch.Tensor, spec: dict, context: dict):
    return _sequence_outputs(blob, weights, spec, context["bank"], context["options"])


def _sequence_outputs(blob: dict, weights: dict, spec: dict, bank, options: SequenceOptions):
    """(mu, scale) of one sequence-head model over every video of `bank`, full sequences, as `dae fit` evaluates
    them (heads.sequence.predict_full, float32); scale None for gdlt."""
    from dae.heads.distributions import scale_from_log_variance
    from dae.heads.sequence.models import build_model, predict_full

    module = build_model(blob["head"], [int(spec.get("seed", 0))], bank.dim, options, tuple(blob["train"]["hidden"]))
    module.load_state_dict({name: t.unsqueeze(0) for name, t in weights["state_dict"].items()})  # a stack of one
    out = predict_full(module, bank, torch.arange(len(bank.lengths)).unsqueeze(0), options.eval_chunk)
    mu = out["mu"][0].numpy().astype(np.float64)
    if out["log_var"] is None:
        return mu, None
    variance = torch.tensor([[spec.get("reparam", "sigma") == "variance"]])
    return mu, scale_from_log_variance(out["log_var"], variance)[0].numpy().astype(np.float64)
