"""CoFInAl's recipe details as its authors' code has them (ZhouKanglei/CoFInAl_AQA @ fe1f4c1), beyond the parity
fixtures: how a score becomes its grade targets, the RG commands' grade values and triplet labels, and the recipes
that cannot follow their source.

Grade targets. The original's label is `score / 25` in Python floats (datasets.py:59), collated to float64, cast
by `label.float()` (train.py:20), then `get_proj_class` (models/model.py:208-212): g = (label * 10000).long(), a
float32 product truncated toward zero; g1 = (g // 100) / 100; g2 = g - g // 100 * 100. The fixtures' six targets
give the same g rounded or truncated, so they cannot tell the two apart; 39 of Fis-V's 500 TES scores can: e.g.
28.71 / 25 = 1.1484 is 11483.999 in float32 x 10000, class 83 truncated (the original) and 84 rounded.
"""
import numpy as np
import torch

# Fis-V TES scores (../shared/data/labels/fisv.csv) whose float32 grade product sits just below an integer (the
# original truncates it: one class lower than rounding), and 29.61 (fixture video 483), whose float64 product is
# 11843.99... but float32 gives exactly 11844 (the original's class 44, as its fixture records).
TES = np.array([28.71, 30.38, 36.45, 32.23, 29.59, 29.61])
ORIGINAL_G = np.array([11483, 12151, 14579, 12891, 11835, 11844])  # int() of the float32 product, as the original


def _targets_as_fit_makes_them(scores):
    """dae fit's targets at --target-scale divide:25 (pipeline/fit.py: (score - 0) / (25 - 0), float64)."""
    return (np.asarray(scores, float) - 0.0) / (25.0 - 0.0)


def test_grade_targets_truncate_the_float32_product_as_the_original():
    from dae.heads.sequence.cofinal import CoFInAlHead, etf_basis, grade_targets

    y = _targets_as_fit_makes_them(TES)
    # the head keeps its targets as float32, as the original's label.float() (train.py:20)
    clips = np.zeros((len(y) * 2, 8), np.float32)
    head = CoFInAlHead("cofinal", clips, np.arange(len(y)) * 2, np.full(len(y), 2), y)
    etf = etf_basis(torch.Generator().manual_seed(0)).unsqueeze(0)
    g1, g2, picked = grade_targets(head.g.unsqueeze(0), etf)
    # where truncation and rounding differ (all but the last), the original's classes are the truncated ones
    rounded = np.round(head.g.numpy() * np.float32(10000)).astype(int)
    assert (rounded[:-1] != ORIGINAL_G[:-1]).all()
    assert g2[0].tolist() == (ORIGINAL_G % 100).tolist()
    assert g1[0].tolist() == torch.tensor(ORIGINAL_G // 100).div(100).tolist()
    assert torch.equal(picked[0], etf[0][:, g2[0]].t())


# ---- the RG commands' grade values and triplet labels (scripts/train_all_rg.sh) ----

def _small_cofinal(**options):
    from dae.heads.sequence.cofinal import StackedCoFInAl
    from dae.heads.sequence.options import SequenceOptions

    o = SequenceOptions(hidden=16, dropout=0.0, **options)
    return StackedCoFInAl([0, 1], 8, o).eval()


def _inputs(b=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, b, t, 8, generator=g), torch.ones(2, b, t, dtype=torch.bool)


def _source_int(s, weight):
    """models/model.py pre_old: sum(weight * sigmoid(diag s) / sum sigmoid(diag s)), with s the per-query scores."""
    p = torch.sigmoid(s)
    return (torch.tensor(weight) * p / p.sum(-1, keepdim=True)).sum(-1)


def test_sigmoid_grade_values_are_the_sources_activate_type_2():
    """--grade-values sigmoid (the RG Ball and Hoop commands' --activate_regular_restrictions 2): int weighs
    [0.1, 0.2, 0.8, 1], int_revert [1, 1, -1, -1] (models/model.py:89-91; not the flip of int's values)."""
    x, mask = _inputs()
    for kind, weight, revert in (("arcl1", [-1, -0.8, 0.8, 1], [1, 0.8, -0.8, -1]),
                                 ("sigmoid", [0.1, 0.2, 0.8, 1], [1, 1, -1, -1])):
        module = _small_cofinal(grade_values=kind)
        with torch.no_grad():
            out = module(x, mask)
            q = out["embed"]
            s = torch.einsum("mbqh,mhq->mbq", q, module.regressor.weight) + module.regressor.bias
            s_rev = torch.einsum("mbqh,mhq->mbq", q, module.regressor_revert.weight) + module.regressor_revert.bias
        assert torch.allclose(out["int"], _source_int(s, weight), atol=1e-6), kind
        assert torch.allclose(out["int_revert"], _source_int(s_rev, revert), atol=1e-6), kind
        cls = torch.bmm(out["dec"], module.etf).argmax(-1)
        assert torch.allclose(out["mu"], (out["int"] + 1 - out["int_revert"]) / 2 + cls / 10000, atol=1e-6)


def _source_hard_triplet(embeddings, labels, margin):
    """GDLT's / CoFInAl's HardTripletLoss(hardest=True) on (n, c) embeddings and labels (models/triplet_loss.py)."""
    e = torch.nn.functional.normalize(embeddings, dim=-1)
    dist = 1 - e @ e.T
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    positive = (~torch.eye(len(labels), dtype=torch.bool)) & same
    hardest_pos = (dist * positive.float()).max(1, keepdim=True).values
    hardest_neg = (dist + dist.max(1, keepdim=True).values * same.float()).min(1, keepdim=True).values
    return torch.relu(hardest_pos - hardest_neg + margin).mean()


def _source_align(type_id, n, b):
    """models/loss.py:39-46 choose_align."""
    if type_id == 1:
        return (torch.arange(-n // 2, n // 2, 1) / (n // 2)).repeat(b)
    n = n * b
    return torch.arange(-n // 2, n // 2, 1) / (n // 2)


def test_triplet_labels_are_the_sources_loss_align_1_and_2():
    """--triplet-labels slot / query = the original's --loss_align 1 / 2 on the flattened (b x 4) decoded queries;
    the two differ (query: no positives, the nearest other query of the batch is the negative)."""
    from dae.heads.sequence.cofinal import cofinal_loss_terms

    module = _small_cofinal()
    x, mask = _inputs(b=5)
    with torch.no_grad():
        out = module(x, mask)
    target = torch.full((2, 5), 0.5)
    got = {}
    for labels, align in (("slot", 1), ("query", 2)):
        terms = cofinal_loss_terms(out, target, module.etf, 0.7, labels)
        for k in range(2):
            theirs = _source_hard_triplet(out["embed"][k].reshape(-1, 16), _source_align(align, 4, 5), 0.7)
            assert abs(terms["triplet"][k].item() - theirs.item()) < 1e-6, (labels, k)
        got[labels] = terms["triplet"]
    assert not torch.allclose(got["slot"], got["query"])


def test_the_trainer_objective_reads_the_grade_values_and_triplet_labels():
    """CoFInAlHead's loss follows the options (a head built with the defaults would give another loss)."""
    from dae.heads.config import TrainConfig
    from dae.heads.sequence.cofinal import CoFInAlHead
    from dae.heads.sequence.options import SequenceOptions
    from dae.heads.trainer import Batch, HeadSpec, Job, Stack

    rng = np.random.default_rng(0)
    clips = rng.normal(size=(6 * 4, 8)).astype(np.float32)
    losses = {}
    for kind, labels in (("arcl1", "slot"), ("sigmoid", "slot"), ("arcl1", "query")):
        options = SequenceOptions(hidden=16, dropout=0.0, crop=4, grade_values=kind, triplet_labels=labels)
        objective = CoFInAlHead("cofinal", clips, np.arange(6) * 4, np.full(6, 4), np.linspace(0.2, 0.9, 6),
                                options)
        jobs = [Job(HeadSpec(seed=0, loss="sup"), np.arange(6), {"test": np.arange(6)})]
        module = objective.build(Stack(jobs, torch.tensor([0]), 1, TrainConfig(), torch.device("cpu")))
        module.train()
        batch = Batch(torch.tensor([[0, 1, 2, 3]]), torch.tensor([0]), 1, [torch.Generator().manual_seed(0)], True)
        losses[kind, labels] = objective.loss(module, objective.inputs(module, batch), batch, None).item()
    assert len(set(losses.values())) == 3, losses


# ---- the RG recipes through dae fit ----

def _rg_like_files(tmp_path, n=24, dim=8):
    """A schema-2 file and a 2-fold manifest shaped like one RG apparatus (ids Hoop_001.., totals 5..23)."""
    import pandas as pd

    from dae.features.store import Sequences, write_features
    from dae.manifest import write_manifest

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(t, dim)).astype(np.float32) for t in rng.integers(3, 10, n)]
    ids = [f"Hoop_{i + 1:03d}" for i in range(n)]
    features, manifest = tmp_path / "seq.h5", tmp_path / "m.csv"
    write_features(features, ids, np.stack([a.mean(0) for a in arrays]), sequences=Sequences.from_arrays(arrays),
                   sequence_dtype="float16", attrs={"backbone": "synthetic"})
    write_manifest(pd.DataFrame({"video_id": ids, "score": rng.uniform(5, 23, n), "fold": np.arange(n) % 2,
                                 "target": "total"}), manifest)
    return features, manifest

def test_rg_recipes_set_the_commands_grade_values_and_triplet_labels():
    from dae.heads.recipes import get_recipe

    expected = {"rg-ball": ("sigmoid", "slot"), "rg-clubs": ("arcl1", "slot"), "rg-hoop": ("sigmoid", "query"),
                "fis-v-tes": ("arcl1", "slot"), "fis-v-pcs": ("arcl1", "slot")}
    for name, values in expected.items():
        s = get_recipe(f"cofinal:{name}").settings
        assert (s["grade_values"], s["triplet_labels"]) == values, name
        get_recipe(f"cofinal:{name}").check_runnable()


def test_fit_at_rg_hoop_trains_and_records_its_grade_values_and_triplet_labels(tmp_path, one_thread):
    import json

    from click.testing import CliRunner
    from dae.pipeline.cli import cli

    features, manifest = _rg_like_files(tmp_path)
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--calibrate",
                                   "none", "--recipe", "cofinal:rg-hoop", "--epochs", "1", "--model-width", "16",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["options"]["recipe"] == "cofinal:rg-hoop"
    assert (config["head_options"]["grade_values"], config["head_options"]["triplet_labels"]) == ("sigmoid", "query")


def test_rg_ribbon_refuses_in_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner
    from dae.pipeline.cli import cli

    features, manifest = _rg_like_files(tmp_path)
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--recipe",
                                   "cofinal:rg-ribbon", "--out", str(tmp_path / "run"),
                                   "--leaderboard", str(tmp_path / "lb.csv")])
    assert res.exit_code == 2, res.output
    message = [line for line in res.output.splitlines() if "cofinal:rg-ribbon" in line]
    assert len(message) == 1 and "cannot run" in message[0] and "cofinal_2" in message[0], res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "lb.csv").exists()
    listed = CliRunner().invoke(cli, ["recipes", "cofinal:rg-ribbon"])
    assert listed.exit_code == 0 and "cannot run: " in listed.output


def test_gdlt_refuses_cofinals_options(tmp_path):
    from click.testing import CliRunner
    from test_recipes import _fisv_like_files

    from dae.pipeline.cli import cli

    features, manifest = _fisv_like_files(tmp_path)
    for option in (["--grade-values", "sigmoid"], ["--triplet-labels", "query"]):
        res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head",
                                       "gdlt", *option, "--out", str(tmp_path / "run")])
        assert res.exit_code == 2 and "head gdlt ignores " + option[0] in res.output, res.output
        assert not (tmp_path / "run").exists()
