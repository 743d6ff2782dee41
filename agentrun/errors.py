"""Typed errors raised by the core; the CLI maps them to messages and exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class AgentrunError(Exception):
    """Base class: anything the user can fix. ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_USAGE

    def lines(self) -> list[str]:
        return [str(self)]


class SpecError(AgentrunError):
    """One or more problems in workstream files, all reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class UsageError(AgentrunError):
    """Bad command-line input, or a request that cannot be honoured."""


class StateError(AgentrunError):
    """The state directory or DB is missing, corrupt, or from a newer agentrun."""


class GitError(AgentrunError):
    """A git operation needed for isolation or integration failed."""
