"""The ``agentrun`` command (and ``python -m agentrun``): the CLI, started safely.

Two things must hold before the CLI's modules are even imported: a Ctrl-C during start-up
exits quietly (130) instead of printing a traceback from whatever import it interrupted, and
a standard descriptor closed by the caller (``agentrun run >&-``) is pointed at /dev/null, or
the next file agentrun opened (the state DB, say) would become its stdout.
"""

import _signal  # built in, like posix: nothing to load before Ctrl-C is handled
import posix

_signal.signal(_signal.SIGINT, lambda signum, frame: posix._exit(130))  # nothing done yet: nothing to tidy

import os  # noqa: E402
import sys  # noqa: E402


def _standard_streams() -> None:
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def main() -> None:
    _standard_streams()
    from agentrun.cli.main import main as cli_main
    cli_main()   # the group restores Python's Ctrl-C handling once a command's modules are loaded


if __name__ == "__main__":
    main()
