"""The CLI's exit codes and the one exception that ends a command with one.

Every module of the CLI raises :class:`CliError` for anything the user must
hear about (an API that refused or is unreachable, a bad flag or spec file);
`main` prints it as ``agentrun: <message>`` and exits with its `code`.

This module must not: import anything of the project, or print.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_API = 1
"""The API refused the request or is unreachable."""
EXIT_USAGE = 2
"""Bad flags or a bad spec file (argparse uses 2 as well)."""
EXIT_RUN_FAILED = 3
"""A followed run failed or was cancelled."""


class CliError(Exception):
    """A message for the user; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_API) -> None:
        super().__init__(message)
        self.code = code


class ApiRefused(CliError):
    """The API answered with an error status (`status`); the message is its problem."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, EXIT_API)
        self.status = status
