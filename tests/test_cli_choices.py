"""Every choice list the CLI reads from the library resolves (a moved constant must not crash an option at use)."""
import click

from dae.pipeline.cli import LibraryChoice, cli


def _commands(group, path=()):
    for name, command in group.commands.items():
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))


def test_every_library_choice_resolves_to_a_nonempty_list():
    seen = 0
    for path, command in _commands(cli):
        for param in command.params:
            if isinstance(param.type, LibraryChoice):
                choices = param.type.choices  # imports the module and reads the list
                assert choices and all(isinstance(c, str) for c in choices), (path, param.name)
                seen += 1
    assert seen >= 10


def test_the_cli_and_every_commands_help_import_neither_torch_nor_scipy():
    """`dae --help`, every command's --help and every option list come from torch-free modules (LibraryChoice,
    *_options, config, defaults): the CLI answers in about a second instead of the 5-6 s that importing torch and
    scipy takes on 2 cores."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys\n"
            f"sys.path.insert(0, {here!r})\n"
            "from click.testing import CliRunner\n"
            "from test_cli_choices import _commands, cli\n"
            "print(sorted(m for m in ('torch', 'scipy', 'numpy', 'pandas') if m in sys.modules))\n"
            "paths = [path for path, _ in _commands(cli)]\n"
            "for path in [()] + paths:\n"
            "    res = CliRunner().invoke(cli, [*path, '--help'])\n"
            "    assert res.exit_code == 0, (path, res.output)\n"
            "print(len(paths), 'torch' in sys.modules, 'scipy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"  # importing the CLI: not even numpy or pandas
    count, torch, scipy = out[1].split()
    assert int(count) >= 20 and torch == "False" and scipy == "False"
