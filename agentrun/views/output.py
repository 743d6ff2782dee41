"""Output that never stops work: a reader that went away, a full disk or a closed terminal
silences the stream instead of raising."""

from __future__ import annotations

import os


def silence(stream) -> None:
    """Python's recipe for a reader that went away (``agentrun status | head``): point the stream's
    descriptor at /dev/null, so that what is still buffered, later writes and the interpreter's
    final flush go nowhere instead of failing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass  # not backed by a descriptor (or already closed): nothing will flush to it
    finally:
        os.close(devnull)


class ForgivingOutput:
    """stdout or stderr of a command: once a write or flush fails (the reader of a pipe went away,
    a full disk, a closed terminal) the stream is silenced and output is dropped from then on, so
    that an output problem never stops work: ``agentrun run | head -3`` still runs to its end,
    records it and exits with its own code. ``reader_gone`` tells followers (``monitor``) that
    nobody reads any more."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text):
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except OSError:
                self._lose()

    def _lose(self) -> None:
        self.reader_gone = True
        silence(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)
