"""The user docs cannot rot: every `dae` command in README.md and docs/*.md names commands and options the CLI has,
the cheap ones run as written (on ../shared/data where they read it), internal links resolve, and the measured
figures in docs/performance.md are the CSVs under results/."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import SHARED_DATA
from dae.pipeline.bench.results import TABLE_END, TABLE_START, markdown_tables
from dae.pipeline.cli import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
LAUNCHERS = {"torchrun", "srun", "timeout", "nohup", "time", "env"}
# commands cheap enough to run as written: they read or write a few files, train nothing
CHEAP = {("manifest", "build"), ("manifest", "check"), ("manifest", "resplit"), ("inspect",), ("features", "import"),
         ("heads",), ("recipes",), ("leaderboard", "show"), ("weights",)}
OUTPUT_OPTIONS = {"--out", "--results-csv", "--plots", "--fail-log", "--leaderboard"}


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def shell_blocks(path: Path):
    """(first line number, text) of every fenced shell block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    block, start, lang = None, 0, ""
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence and block is None:
            block, start, lang = [], number + 1, fence.group(1).lower()
        elif fence:
            if lang in SHELL:
                yield start, "\n".join(block)
            block = None
        elif block is not None:
            block.append(line)


def dae_commands(path: Path):
    """(line number, argv after `dae`) of every `dae` invocation in the file's shell blocks."""
    for start, text in shell_blocks(path):
        text = re.sub(r"\\\n", " ", text)  # continuation lines
        for offset, line in enumerate(text.splitlines()):
            for argv in _commands_in_line(line):
                yield start + offset, argv


def _commands_in_line(line: str):
    """argv after `dae` of each `dae` command of one shell line (and of a `sh -c '...'` inside it)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    segment = []
    for token in [*lexer, ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        for i in range(len(segment) - 2):
            if segment[i] in ("sh", "bash") and segment[i + 1] == "-c":
                yield from _commands_in_line(segment[i + 2])
        argv = _dae_argv(segment)
        if argv is not None:
            yield argv
        segment = []


def _dae_argv(tokens):
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "dae":
        return tokens[1:]
    if re.match(r"^python3?$", tokens[0]) and tokens[1:3] == ["-m", "dae"]:
        return tokens[3:]
    if tokens[0] in LAUNCHERS and "dae" in tokens:
        return tokens[tokens.index("dae") + 1:]
    return None


def resolve(argv):
    """(command path, the leaf click command, its arguments) or an error message."""
    command, names, rest = cli, [], list(argv)
    while isinstance(command, click.Group):
        while rest and rest[0] in ("--debug",):
            rest = rest[1:]
        if not rest or rest[0] in ("--help", "-h", "--version"):
            return tuple(names), command, rest
        sub = command.commands.get(rest[0])
        if sub is None:
            return f"`dae {' '.join([*names, rest[0]])}`: no such command (choose from {', '.join(command.commands)})"
        names.append(rest[0])
        command, rest = sub, rest[1:]
    return tuple(names), command, rest


def check_options(command: click.Command, names, args) -> list[str]:
    """What is wrong with `args` for this command: unknown options, option values outside a choice list."""
    where = f"`dae {' '.join(names)}`"
    options = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in (*param.opts, *param.secondary_opts):
                options[opt] = param
    problems, i = [], 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-") or token == "-":
            continue
        name, _, inline = token.partition("=")
        if name in ("--help", "-h"):
            continue
        param = options.get(name)
        if param is None:
            problems.append(f"{where} has no option {name}")
            continue
        if param.is_flag or param.count:
            continue
        value = inline or (args[i] if i < len(args) else "")
        i += 0 if inline else 1
        if isinstance(param.type, click.Choice) and "$" not in value and value not in param.type.choices:
            problems.append(f"{where} {name} {value!r}: not one of {', '.join(map(str, param.type.choices))}")
    return problems


def all_commands():
    return [(doc, line, argv) for doc in DOCS for line, argv in dae_commands(doc)]


def test_the_docs_have_commands_to_check():
    found = {_name(doc) for doc, _, _ in all_commands()}
    assert "README.md" in found and len(found) >= 8, found


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_dae_command_and_option_in_the_docs_exists(doc):
    problems = []
    for line, argv in dae_commands(doc):
        resolved = resolve(argv)
        if isinstance(resolved, str):
            problems.append(f"{_name(doc)}:{line}: {resolved}")
            continue
        names, command, args = resolved
        problems += [f"{_name(doc)}:{line}: {p}" for p in check_options(command, names, args)]
        if names == ("fit",):
            problems += [f"{_name(doc)}:{line}: {p}" for p in check_head_options(command, args)]
    assert not problems, "\n".join(problems)


def check_head_options(command: click.Command, args) -> list[str]:
    """`dae fit` refuses options its head ignores (exit 2): so must the docs."""
    from dae.pipeline.option_use import ignored_options

    by_flag = {opt: p for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}
    given = [by_flag[a.split("=")[0]].name for a in args if a.split("=")[0] in by_flag]
    if "recipe" in given or "config_path" in given:
        return []  # the head comes from the recipe or the replayed run
    head = args[args.index("--head") + 1] if "--head" in args else by_flag["--head"].default
    ignored = ignored_options(head, given)
    return [f"`dae fit --head {head}` ignores {', '.join(ignored)}"] if ignored else []


def _inputs(command: click.Command, args) -> list[str]:
    """The paths a command would read: its arguments and its path options that are not outputs."""
    options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
    path_arguments = any(isinstance(p, click.Argument) and isinstance(p.type, click.Path) for p in command.params)
    paths, i = [], 0
    while i < len(args):
        token = args[i]
        i += 1
        if token.startswith("-"):
            param = options.get(token.split("=")[0])
            if param is None or param.is_flag:
                continue
            value = args[i] if "=" not in token else token.split("=", 1)[1]
            i += 0 if "=" in token else 1
            if isinstance(param.type, click.Path) and token not in OUTPUT_OPTIONS:
                paths.append(value)
        elif path_arguments:  # not e.g. `dae manifest build DATASET`
            paths.append(token)
    return paths


def _out_path(args):
    return next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--out"), None)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_the_cheap_commands_run_as_written(doc, tmp_path, monkeypatch):
    """--help anywhere, and manifest, import, inspect, heads and leaderboard commands whose inputs exist, run in
    order in one folder beside a link to ../shared (so `../shared/data/...` paths resolve as from the repository)."""
    work = tmp_path / "work"
    work.mkdir()
    if SHARED_DATA.is_dir():
        (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    monkeypatch.chdir(work)
    runner = CliRunner()
    ran, skipped = [], []
    for line, argv in dae_commands(doc):
        resolved = resolve(argv)
        if isinstance(resolved, str):
            continue  # reported by the option test
        names, command, args = resolved
        fetches = names == ("weights",) and "--no-fetch" not in args  # dae weights downloads unless --no-fetch
        if not ("--help" in args or "-h" in args or names in CHEAP) or fetches:
            continue
        missing = [p for p in _inputs(command, args) if not Path(p).exists()]
        if missing and "--help" not in args:
            skipped.append(f"{line}: dae {' '.join(argv)} (absent: {', '.join(missing)})")
            continue
        out = _out_path(args)
        if out and Path(out).is_file():  # a guide may show one command twice; each must work as written
            Path(out).unlink()
        res = runner.invoke(cli, argv)
        assert res.exit_code == 0, f"{_name(doc)}:{line}: dae {' '.join(argv)}\n{res.output}"
        ran.append(line)
    uses_shared = "../shared/data" in doc.read_text(encoding="utf-8")
    if uses_shared and SHARED_DATA.is_dir():
        assert ran, f"{_name(doc)} reads ../shared/data but none of its cheap commands ran: {skipped}"
    if uses_shared and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the commands that read it were not run ({len(skipped)} skipped)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_internal_links_and_anchors_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            problems.append(f"{_name(doc)}: link to {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            problems.append(f"{_name(doc)}: link to {target}: no heading with that anchor in {linked.name}")
    assert not problems, "\n".join(problems)


def test_every_guide_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in DOCS[1:] if f"(docs/{p.name})" not in readme]
    assert not unlinked, f"guides the README does not link: {unlinked}"


def test_the_performance_tables_are_the_results_csvs():
    text = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    shown = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    expected = markdown_tables((REPO / "results").glob("*.csv")).strip()
    assert shown == expected, ("docs/performance.md's tables differ from results/*.csv: regenerate them with "
                               "python -c \"from dae.pipeline.bench.results import update_doc; "
                               "update_doc('docs/performance.md', 'results')\"")


def test_the_readme_is_short_and_keeps_the_quick_start_contract():
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 150, len(readme)
    for marker in ("<!-- quickstart-demo -->", "<!-- quickstart-tests -->"):
        at = readme.index(marker)
        assert readme[at + 1] == "```bash" and readme[at + 2].startswith("python3 -m venv .venv && "), marker
    image = re.search(r"!\[[^\]]*\]\(([^)]+)\)", "\n".join(readme))
    assert image and (REPO / image.group(1)).stat().st_size < 200_000
