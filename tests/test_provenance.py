"""Wherever dae tells a user "Kinetics-400" it says which checkpoint: DeepMind's rgb_scratch (from scratch), not the
ImageNet-inflated rgb_imagenet the papers used, and how to use another one with --weights."""
from __future__ import annotations

import re

import click
from click.testing import CliRunner

from dae.pipeline.cli import cli


def _helps():
    """Every command's --help as a user sees it."""
    def walk(group, path=()):
        for name, command in group.commands.items():
            yield path + (name,)
            if isinstance(command, click.Group):
                yield from walk(command, path + (name,))

    runner = CliRunner()
    for path in [(), *walk(cli)]:
        yield path, runner.invoke(cli, [*path, "--help"], terminal_width=200).output


def test_every_kinetics_400_mention_in_the_help_names_the_checkpoint():
    seen = 0
    for path, text in _helps():
        flat = " ".join(text.split())
        for match in re.finditer(r"Kinetics-400", flat):
            seen += 1
            context = flat[max(0, match.start() - 200):match.end() + 200]
            assert re.search(r"rgb_scratch|from scratch", context), (path, context)
    assert seen >= 3


def test_help_says_how_to_use_another_checkpoint():
    runner = CliRunner()
    for command in (["weights", "--help"], ["extract", "--help"]):
        out = runner.invoke(cli, command).output
        assert "rgb_scratch" in out and "rgb_imagenet" in out and "--weights" in out, command
