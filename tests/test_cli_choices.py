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


def test_importing_the_cli_imports_neither_torch_nor_scipy():
    """`dae --help` and every option list come from torch-free modules (LibraryChoice, *_options, defaults): the
    CLI answers in a fraction of a second instead of the 4-5 s that importing torch and scipy takes on 2 cores."""
    import subprocess
    import sys

    code = ("import sys; from dae.pipeline.cli import cli; "
            "print(sorted(m for m in ('torch', 'scipy', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
