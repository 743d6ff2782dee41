"""The append-only JSONL event log of a run.

The state DB is the source of truth; this log is its journal, for people and
for followers such as ``monitor``. Each record is one ``os.write`` of one
complete line on an O_APPEND descriptor, under ``flock`` so that sequence
numbers stay unique across processes. A crash can leave a torn last line:
readers skip it, and the next writer truncates it before appending. Every
record is redacted (``redaction.in_use``) before it is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from agentrun.store import crashpoints
from agentrun.store import redaction

TAIL_BYTES = 8192
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode  # one encoder, not one per record
_SEQ_HEAD = re.compile(rb'\{"seq":(\d+),')


class EventLog:
    def __init__(self, path: str | Path, run_id: str):
        self.path = Path(path)
        self.run_id = run_id
        self._fd: int | None = None
        self._pid = 0
        self._known_size = -1
        self._seq = 0

    def _descriptor(self) -> int:
        # A descriptor inherited across fork would share its offset and lock
        # with the parent: each process opens its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
            self._known_size = -1
        return self._fd

    def emit(self, type_: str, ws_id: str | None = None, attempt: int | None = None, **fields: Any) -> dict:
        return self.emit_all([(type_, ws_id, attempt, fields)])[0]

    def emit_all(self, items: list[tuple[str, str | None, int | None, dict[str, Any]]]) -> list[dict]:
        """Append several records (type, ws id, attempt, fields) with one locked write."""
        if not items:
            return []
        fd = self._descriptor()
        ts = round(time.time(), 6)
        records = [{"seq": 0, "ts": ts, "run_id": self.run_id, "type": type_, "ws_id": ws_id,
                    "attempt": attempt, **fields} for type_, ws_id, attempt, fields in items]
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size != self._known_size:
                size = self._repair_and_read_seq(fd, size)
            lines = []
            for record in records:
                self._seq += 1
                record["seq"] = self._seq
                lines.append(_encode(record))
            data = redaction.in_use().redact("\n".join(lines) + "\n").encode()
            crashpoints.torn_write(fd, data)
            os.write(fd, data)
            self._known_size = size + len(data)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return records

    def _repair_and_read_seq(self, fd: int, size: int) -> int:
        """Drop a torn tail, learn the last sequence number; returns the repaired size."""
        # The usual case, another process appended whole records since our last write, takes one
        # read: the last record and the newline before it are in the tail.
        start = max(0, size - TAIL_BYTES)
        tail = os.pread(fd, size - start, start)
        if tail.endswith(b"\n"):
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            head = _SEQ_HEAD.match(tail, cut + 1) if cut >= 0 or start == 0 else None
            if head:
                self._seq = int(head.group(1))
                return size
        keep = complete_size(fd, size)
        if keep != size:
            os.ftruncate(fd, keep)
        self._seq = 0
        end = keep
        while end > 0:  # from the last complete line backwards, to the last one that parses
            start = complete_size(fd, end - 1)
            line = os.pread(fd, end - start, start)
            # Every record starts with its sequence number: read just that (this runs whenever
            # another process appended since our last write), and parse the line only if it does not.
            head = _SEQ_HEAD.match(line)
            if head:
                self._seq = int(head.group(1))
                break
            try:
                self._seq = int(json.loads(line)["seq"])
                break
            except (ValueError, KeyError, TypeError):
                end = start
        return keep

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def complete_size(fd: int, size: int) -> int:
    """Length of the file up to and including its last newline."""
    end = size
    while end > 0:
        start = max(0, end - TAIL_BYTES)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def repair_tail(path: str | Path) -> int:
    """Truncate a torn (unterminated) last line; returns the number of bytes removed."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        keep = complete_size(fd, size)
        if keep != size:
            os.ftruncate(fd, keep)
        return size - keep
    finally:
        os.close(fd)


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict], int, int]:
    """Complete records from ``offset``; returns (records, new offset, lines skipped as garbage).

    An unterminated last line is not consumed: it is either being written or
    torn, and the caller will see it again (completed) or never.
    """
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset, 0
    records, bad = [], 0
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
        except ValueError:
            bad += 1
    return records, offset + end + 1, bad

