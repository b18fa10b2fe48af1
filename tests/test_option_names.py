"""Messages and help name options as the command line spells them (issue 23, house 5): a sequence head's width is
--model-width (the field is `hidden`), and `dae ablate voters` takes a list of counts (--voter-counts) where
`dae fit --voters` takes one."""
import pandas as pd
import pytest
from click.testing import CliRunner
from test_sequence_fit import _sequence_files

from dae.errors import UsageError
from dae.heads.sequence.options import SequenceOptions
from dae.pipeline.cli import cli


def test_width_not_divisible_by_heads_names_model_width(tmp_path):
    with pytest.raises(UsageError, match=r"^--model-width 18 must be divisible by --attention-heads 4$"):
        SequenceOptions(hidden=18, heads=4).check()
    features, manifest = _sequence_files(tmp_path, n=12)
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head", "gdlt",
                                   "--epochs", "1", "--out", str(tmp_path / "run"), "--leaderboard",
                                   str(tmp_path / "lb.csv"), "--crop", "4", "--model-width", "18",
                                   "--attention-heads", "4"])
    assert res.exit_code == 2, res.output
    assert "--model-width 18 must be divisible by --attention-heads 4" in res.output and "--hidden" not in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "lb.csv").exists()


def test_out_of_range_sequence_options_name_the_cli_options():
    with pytest.raises(UsageError) as err:
        SequenceOptions(crop=0).check()
    message = str(err.value)
    assert "--crop" in message and "--model-width" in message and "hidden" not in message


def test_ablate_voters_says_its_counts_are_a_list_and_fit_voters_one():
    study = CliRunner().invoke(cli, ["ablate", "voters", "--help"], terminal_width=200)
    assert study.exit_code == 0
    assert "--voter-counts" in study.output and "comma-separated list" in study.output
    fit = CliRunner().invoke(cli, ["fit", "--help"], terminal_width=200)
    assert "--voter-counts" not in fit.output and "INTEGER" in fit.output.split("--voters", 1)[1].split("\n")[0]


def test_ablate_voters_takes_voter_counts_and_its_old_name(tmp_path, one_thread):
    from test_core_fit import mtl_shaped

    features, manifest = mtl_shaped(tmp_path)
    for name, flag in (("new", "--voter-counts"), ("old", "--voters")):
        board = tmp_path / f"{name}.csv"
        res = CliRunner().invoke(cli, ["ablate", "voters", "--features", str(features), "--manifest", str(manifest),
                                       "--seed", "0", "--epochs", "1", "--rules", "any", flag, "1,3", "--out",
                                       str(tmp_path / name), "--leaderboard", str(board)])
        assert res.exit_code == 0, res.output
        assert set(pd.read_csv(board)["voters"]) == {1, 3}


def _walk(command, path=()):
    import click

    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, path + (name,))
    else:
        yield path, command


def test_threads_means_torch_threads_in_every_command_and_decoders_take_decode_threads():
    """`--threads` had three meanings (torch threads of extract's model, torch threads per study task, and decoder
    threads in `dae bench decode`); now it is torch's wherever it appears, and decoder threads are --decode-threads."""
    seen = {}
    for path, command in _walk(cli):
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if flag in ("--threads", "--decode-threads"):
                    seen[(" ".join(path), flag)] = (param.help or "").lower()
    threads = {k: v for k, v in seen.items() if k[1] == "--threads"}
    decode = {k: v for k, v in seen.items() if k[1] == "--decode-threads"}
    assert threads and decode
    assert all("torch" in help_ and "decod" not in help_ for help_ in threads.values()), threads
    assert all("decod" in help_ for help_ in decode.values()), decode
    assert ("bench decode", "--decode-threads") in decode and ("extract", "--decode-threads") in decode
