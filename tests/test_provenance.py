"""Wherever dae writes "Kinetics-400" it says which checkpoint: DeepMind's rgb_scratch (from scratch), not the
ImageNet-inflated rgb_imagenet the papers used, and how to use another one with --weights."""
from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from dae.pipeline.cli import cli

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*REPO.glob("pipeline/*.py"), *REPO.glob("features/*.py"), *REPO.glob("heads/*.py"), REPO / "README.md"]


def test_every_kinetics_400_mention_names_rgb_scratch():
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "Kinetics-400" in line and "kinetics400" not in line:
                context = " ".join(path.read_text(encoding="utf-8").splitlines()[max(0, number - 2):number + 2])
                assert re.search(r"rgb_scratch|from scratch", context), f"{path.name}:{number}: {line.strip()}"


def test_help_says_how_to_use_another_checkpoint():
    runner = CliRunner()
    for command in (["weights", "--help"], ["extract", "--help"]):
        out = runner.invoke(cli, command).output
        assert "rgb_scratch" in out and "rgb_imagenet" in out, command
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "dae extract --weights rgb_imagenet.pt" in readme
