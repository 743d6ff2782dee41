"""A command as written in a workstream file (``run``, ``setup``, ``gates``): a shell string or an argv list.

Its own module because the process layer runs commands and needs nothing else of the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """A command as written: a shell string, or an argv list run without a shell."""

    argv: tuple[str, ...] | None = None
    shell: str | None = None
    name: str = ""

    def popen_args(self) -> list[str]:
        if self.shell is not None:
            return ["/bin/sh", "-c", self.shell]
        return list(self.argv or ())

    def display(self) -> str:
        return self.name or (self.shell if self.shell is not None else " ".join(self.argv or ()))

    def to_json(self) -> Any:
        base: Any = self.shell if self.shell is not None else list(self.argv or ())
        return {"name": self.name, "run": base} if self.name else base

