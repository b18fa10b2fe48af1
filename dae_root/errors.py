"""User-facing errors: the CLI prints them as one line and exits with their code (DESIGN.md, exit codes)."""


class DaeError(Exception):
    """A problem with the user's input or environment, explained in one line. Exit code 1."""

    exit_code = 1


class UsageError(DaeError):
    """Options that contradict each other or name something that does not exist. Exit code 2."""

    exit_code = 2
