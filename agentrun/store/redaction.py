"""The secrets of a run, and their removal from everything agentrun writes.

A run's secrets are the values of the variables named by ``api_key_env`` of
every model it knows (the presets and its ``[models.*]`` entries). Commands,
setup and gates run without those variables (see ``attempt.attempt_env``),
and every value is replaced by ``[REDACTED]`` in kept logs, the state DB,
the event log, conversations and the response cache.

Values shorter than ``MIN_SECRET_LENGTH`` are not redacted: replacing a
short string everywhere would mangle ordinary output, and no real API key is
that short.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from typing import Callable, Iterable, Mapping

from agentrun.spec.models import PRESETS, Model

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
CHUNK_BYTES = 1 << 20


class Secrets:
    """A set of secret values. Falsy when empty, and then every method costs next to nothing
    (runs without keys, and runs of thousands of tiny workstreams, redact on every write)."""

    def __init__(self, values: Iterable[str] = ()):
        self.values = tuple(sorted({v for v in values if v}, key=len, reverse=True))
        # Records are often stored as JSON, where a value with quotes, backslashes or non-ASCII
        # characters is written escaped: both spellings are looked for.
        texts = {form for v in self.values
                 for form in (v, json.dumps(v)[1:-1], json.dumps(v, ensure_ascii=False)[1:-1])}
        self._blobs = sorted({v.encode("utf-8", "surrogateescape") for v in self.values}, key=len, reverse=True)
        self._text = _alternation(texts)
        self._bytes = _alternation(self._blobs)
        self.longest = len(self._blobs[0]) if self._blobs else 0   # bytes: the overlap of chunked redaction

    def __bool__(self) -> bool:
        return bool(self.values)

    def redact(self, text: str) -> str:
        if self._text is None or not text:
            return text
        return self._text.sub(REDACTED, text)

    def redact_bytes(self, data: bytes) -> bytes:
        if self._bytes is None or not data:
            return data
        return self._bytes.sub(REDACTED.encode(), data)

    def found_in(self, fd: int, start: int, end: int) -> bool:
        """Whether any secret occurs in bytes [start, end) of ``fd``, read a chunk at a time."""
        if self._bytes is None:
            return False
        overlap = self.longest - 1
        offset = start
        while offset < end:
            lead = min(overlap, offset - start)   # the end of the previous chunk, again
            data = os.pread(fd, min(CHUNK_BYTES, end - offset) + lead, offset - lead)
            if len(data) <= lead:  # the file is shorter than ``end``
                return False
            if self._bytes.search(data):
                return True
            offset += len(data) - lead
        return False

    def copy(self, fd: int, start: int, end: int, write: Callable[[bytes], object]) -> None:
        """Bytes [start, end) of ``fd`` to ``write``, redacted, a chunk at a time: never the whole
        range in memory. The last ``longest - 1`` bytes of each chunk wait for the next one, so a
        secret that spans two chunks is still caught whole."""
        pattern = self._bytes
        keep = max(0, self.longest - 1)
        redacted = REDACTED.encode()
        carry = b""
        offset = start
        while offset < end:
            data = os.pread(fd, min(CHUNK_BYTES, end - offset), offset)
            if not data:
                break
            offset += len(data)
            buf = carry + data
            if pattern is None:
                write(buf)
                carry = b""
                continue
            # Everything that starts before ``safe`` lies wholly in ``buf``: what starts at or
            # after it may continue in the next chunk.
            safe = len(buf) - keep if offset < end else len(buf)
            pos = 0
            out = []
            for match in pattern.finditer(buf):
                if match.start() >= safe:
                    break
                out += (buf[pos:match.start()], redacted)
                pos = match.end()
            cut = max(pos, safe)
            out.append(buf[pos:cut])
            write(b"".join(out))
            carry = buf[cut:]
        if carry:
            write(self.redact_bytes(carry))

    def cut_before(self, fd: int, offset: int, limit: int) -> int:
        """``offset``, moved back to the start of any secret in ``fd`` that it would cut in two
        (``limit``: the file's size): a range cut there holds no part of a secret but whole ones."""
        if not self._blobs or offset <= 0:
            return offset
        while True:
            begin = max(0, offset - self.longest + 1)
            data = os.pread(fd, min(limit, offset + self.longest - 1) - begin, begin)
            at = offset - begin
            starts = []
            for blob in self._blobs:  # overlapping occurrences too: the window is a few dozen bytes
                found = data.find(blob)
                while 0 <= found < at:
                    if found + len(blob) > at:
                        starts.append(found)
                    found = data.find(blob, found + 1)
            if not starts:
                return offset
            offset = begin + min(starts)

    def tail(self, fd: int, start: int, end: int, limit: int) -> bytes:
        """The last ``limit`` bytes of [start, end) of ``fd``, redacted; moved back to the start of
        a secret that the window would cut in two, which is redacted whole."""
        begin = self.cut_before(fd, max(start, end - limit), end)
        return self.redact_bytes(os.pread(fd, end - begin, begin))


def _alternation(items: Iterable) -> re.Pattern | None:
    """One pattern matching any of ``items`` (all str or all bytes), the longest first."""
    if not items:
        return None
    ordered = sorted(items, key=len, reverse=True)
    bar = b"|" if isinstance(ordered[0], bytes) else "|"
    return re.compile(bar.join(map(re.escape, ordered)))


NO_SECRETS = Secrets()


def secret_names(models: Mapping[str, Model] | None) -> frozenset[str]:
    """The variables that hold API keys: ``api_key_env`` of every preset and ``[models.*]`` entry."""
    known = [*PRESETS.values(), *(models or {}).values()]
    return frozenset(m.api_key_env for m in known if m.api_key_env)


def run_secrets(names: Iterable[str], environ: Mapping[str, str]) -> Secrets:
    """The values of ``names`` in ``environ``, except those shorter than ``MIN_SECRET_LENGTH``."""
    return Secrets(environ[n] for n in names if len(environ.get(n, "")) >= MIN_SECRET_LENGTH)


_in_use = NO_SECRETS


def use(secrets: Secrets) -> None:
    """The secrets of the run this process works for. Set by the orchestrator before it forks its
    workers, so that writers that are not handed a run's context (the event log) redact them too."""
    global _in_use
    _in_use = secrets


def in_use() -> Secrets:
    return _in_use


PR_SET_DUMPABLE = 4


def hide_process_files() -> None:
    """Make this process, and the workers it forks, non-dumpable: their /proc files (``environ``,
    ``mem``) become unreadable to other processes of the same user, such as the commands they run,
    which could otherwise read the keys agentrun was started with there. A command is dumpable
    again once it execs. (A process with CAP_SYS_PTRACE, such as root's, can still read them.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
