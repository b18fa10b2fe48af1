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
