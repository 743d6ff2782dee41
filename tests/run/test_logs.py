"""A running attempt's log is bounded on disk too: the part its kept log will omit is punched out
(``attempt.RunningLog``, ``procs.punch_hole``) while the command still writes, and the kept log is
exactly what it was before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentrun.proc import process as procs
from agentrun.store import redaction
from agentrun.run.attempt import (HOLE_ALIGN_BYTES, LOG_CHECK_MIN_SECONDS, LOG_CHECK_SECONDS, LOG_HEAD_BYTES,
                              LOG_SLACK_BYTES, LOG_TAIL_BYTES, RunningLog, copy_log)
from conftest import running_log, state, wait_for, write_ws

KEY = "sk-test-" + "q7" * 12
OTHER = "another-secret-value"
RUN = "ab"   # the secret RUN * 4 overlaps itself in a run of RUN: cut_before walks back along it
CAP = LOG_HEAD_BYTES + LOG_TAIL_BYTES


def filler(size: int) -> bytearray:
    """Output without zero bytes (a hole in the wrong place shows) and without secrets."""
    line = b"0123456789 the quick brown fox jumps over the lazy dog\n"
    return bytearray((line * (size // len(line) + 1))[:size])


def kept(fd: int, size: int, secrets: redaction.Secrets) -> bytes:
    out = bytearray()
    copy_log(fd, size, out.extend, secrets)
    return bytes(out)


def holes(fd: int) -> list[tuple[int, int]]:
    """The holes of a file, as (start, end), from the file system itself."""
    found, offset, size = [], 0, os.fstat(fd).st_size
    while offset < size:
        start = os.lseek(fd, offset, os.SEEK_HOLE)
        if start >= size:
            break
        try:
            end = os.lseek(fd, start, os.SEEK_DATA)
        except OSError:  # ENXIO: a hole up to the end
            end = size
        found.append((start, end))
        offset = end
    return found


def marker(dropped: int) -> bytes:
    return (f"\n[agentrun] ... {dropped / 1e6:.1f} MB of output omitted ({dropped} bytes; a log keeps the "
            f"first 1 MiB and the last 7 MiB of the output) ...\n").encode()


def kept_from(data: bytes) -> bytes:
    """What copy_log keeps of ``data``, written out by hand."""
    dropped = len(data) - CAP
    newline = b"" if data[LOG_HEAD_BYTES - 1:LOG_HEAD_BYTES] == b"\n" else b"\n"
    return data[:LOG_HEAD_BYTES] + newline + marker(dropped)[1:] + data[-LOG_TAIL_BYTES:]


# --- the hole itself ---------------------------------------------------------------------------------

def test_a_hole_gives_its_blocks_back_keeps_the_size_and_the_rest(tmp_path):
    data = bytes(filler(3 << 20))
    path = tmp_path / "log"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        before = os.fstat(fd).st_blocks * 512
        assert procs.punch_hole(fd, 1 << 20, 1 << 20)
        after = os.fstat(fd)
        assert after.st_size == len(data)
        assert before - after.st_blocks * 512 >= (1 << 20) - HOLE_ALIGN_BYTES  # an extent block may be added
        assert holes(fd) == [(1 << 20, 2 << 20)]
        assert os.pread(fd, len(data), 0) == data[:1 << 20] + bytes(1 << 20) + data[2 << 20:]
        os.write(fd, b"more\n")  # the writer's appends still go to the end
        assert os.pread(fd, 10, len(data) - 5) == data[-5:] + b"more\n"
    finally:
        os.close(fd)


def test_where_a_file_cannot_have_holes_punching_says_so_without_an_error(tmp_path):
    # procfs has no fallocate: the kernel's answer is EOPNOTSUPP, as from any file system without holes.
    fd = os.open("/proc/self/comm", os.O_WRONLY)
    try:
        assert procs.punch_hole(fd, 0, HOLE_ALIGN_BYTES) is False
    finally:
        os.close(fd)
    read_end, write_end = os.pipe()  # not a file at all: ESPIPE
    try:
        assert procs.punch_hole(write_end, 0, HOLE_ALIGN_BYTES) is False
    finally:
        os.close(read_end)
        os.close(write_end)
    # Anything else is an error (here: a descriptor not open for writing).
    path = tmp_path / "log"
    path.write_bytes(bytes(filler(2 * HOLE_ALIGN_BYTES)))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="Bad file descriptor"):
            procs.punch_hole(fd, 0, HOLE_ALIGN_BYTES)
    finally:
        os.close(fd)


# --- the wait loop --------------------------------------------------------------------------------------

def test_the_wait_looks_at_the_output_when_asked_and_stops_when_told(tmp_path):
    release = tmp_path / "release"
    looks = []

    def check_output():
        looks.append(len(looks))
        if len(looks) < 3:
            return 0.01
        release.touch()
        return None   # no more looks: the command ends once it sees the file

    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = procs.spawn(["sh", "-c", f"until [ -e {release} ]; do sleep 0.01; done"], cwd=str(tmp_path),
                          env=dict(os.environ), log_fd=fd)
        end = procs.wait(pid, timeout=60, cancel_fd=None, check_output=check_output)
    finally:
        os.close(fd)
    assert (end.how, end.returncode) == ("exited", 0)
    assert looks == [0, 1, 2]


# --- RunningLog on real files --------------------------------------------------------------------------

def _with_secrets_at_every_cut(size: int) -> bytearray:
    """Output of ``size`` bytes with secrets across the places where a cut or an end of the hole
    would fall without looking: the head's cut and the block after it, and the tail's cut (for
    ``size``, the log's size when RunningLog looks) and the blocks before it, there as a run of a
    secret that overlaps itself."""
    data = filler(size)
    tail_block = (size - LOG_TAIL_BYTES) // HOLE_ALIGN_BYTES * HOLE_ALIGN_BYTES
    run = RUN * ((2 * HOLE_ALIGN_BYTES + 120) // 2)
    for at, value in ((LOG_HEAD_BYTES - 10, KEY), (LOG_HEAD_BYTES + HOLE_ALIGN_BYTES - 5, OTHER),
                      (tail_block - 2 * HOLE_ALIGN_BYTES - 100, run), (tail_block - 3 * HOLE_ALIGN_BYTES - 10, KEY)):
        data[at:at + len(value)] = value.encode()
    return data


@pytest.mark.parametrize("more", [0, 5000, 3 << 20])
def test_the_hole_changes_nothing_in_the_kept_log_and_cuts_no_secret(tmp_path, more):
    secrets = redaction.Secrets([KEY, OTHER, RUN * 4])
    size = CAP + LOG_SLACK_BYTES + 20 * HOLE_ALIGN_BYTES + 3   # the tail's cut is not block-aligned
    data = _with_secrets_at_every_cut(size)
    data += filler(more)
    reference = tmp_path / "reference"
    reference.write_bytes(data)
    fd = os.open(tmp_path / "spool", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    ref_fd = os.open(reference, os.O_RDONLY)
    try:
        log = RunningLog(fd, secrets)
        os.write(fd, data[:size])
        assert LOG_CHECK_MIN_SECONDS <= log.check() <= LOG_CHECK_SECONDS
        first = holes(fd)
        assert first, "nothing was punched"
        if more:
            os.write(fd, data[size:])
            log.check()
        final = len(data)
        assert kept(fd, final, secrets) == kept(ref_fd, final, secrets)
        shown = kept(fd, final, secrets)
        assert b"\0" not in shown and not any(value.encode() in shown for value in secrets.values)
        assert os.fstat(fd).st_blocks * 512 <= CAP + LOG_SLACK_BYTES + 16 * HOLE_ALIGN_BYTES
        for start, end in holes(fd):
            assert LOG_HEAD_BYTES < start < end < final - LOG_TAIL_BYTES
            for value in secrets.values:
                at = data.find(value.encode())
                while at >= 0:
                    assert not at < start < at + len(value) and not at < end < at + len(value), (at, start, end)
                    at = data.find(value.encode(), at + 1)
    finally:
        os.close(fd)
        os.close(ref_fd)


def test_a_log_that_cannot_be_punched_now_is_left_as_it_is_and_tried_again_later(tmp_path):
    data = bytes(filler(CAP + 2 * LOG_SLACK_BYTES))
    path = tmp_path / "spool"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)   # fallocate fails with EBADF, as it could with ENOSPC or EIO
    try:
        log = RunningLog(fd, redaction.Secrets())
        assert LOG_CHECK_MIN_SECONDS <= log.check() <= LOG_CHECK_SECONDS
        assert log.hole_end == 0 and holes(fd) == [] and os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)


# A RunningLog on a file of ramfs (which has no holes), in a mount namespace of its own.
ON_RAMFS = """
import json, os, sys
from agentrun.run.attempt import RunningLog, copy_log
from agentrun.store.redaction import Secrets
mount, reference = sys.argv[1:]
data = open(reference, "rb").read()
fd = os.open(os.path.join(mount, "spool"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, data)
log = RunningLog(fd, Secrets())
delay = log.check()
kept = bytearray()
copy_log(fd, len(data), kept.extend, Secrets())
print(json.dumps({"delay": delay, "hole_end": log.hole_end, "unchanged": os.pread(fd, len(data), 0) == data,
                  "kept": kept.decode()}))
"""


def test_where_the_file_system_has_no_holes_the_log_is_left_as_it_is(tmp_path):
    data = bytes(filler(CAP + 2 * LOG_SLACK_BYTES))
    reference = tmp_path / "reference"
    reference.write_bytes(data)
    mount = tmp_path / "ramfs"
    mount.mkdir()
    in_namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    try:
        probe = subprocess.run([*in_namespace, 'mount -t ramfs ramfs "$1"', "sh", mount], capture_output=True,
                               text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("no unshare(1) to mount a ramfs with")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a ramfs in a namespace of its own here: {probe.stderr.strip()}")
    proc = subprocess.run([*in_namespace, 'mount -t ramfs ramfs "$1" && exec "$2" -c "$3" "$1" "$4"', "sh", mount,
                           sys.executable, ON_RAMFS, reference], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # Nothing punched, nothing said, and no further looks while this command runs.
    assert result == {"delay": None, "hole_end": None, "unchanged": True,
                      "kept": kept_from(data).decode()}
    assert proc.stderr == ""


# --- a flooding command, end to end ------------------------------------------------------------------

# Far above what a command writes to a file here (head | tr: about 0.2 GB/s on a shared machine):
# the log is looked at every LOG_CHECK_SECONDS at the latest, more often while it floods.
GENEROUS_BYTES_PER_SECOND = 1e9




def test_a_flooding_command_keeps_its_log_within_the_cap_on_disk_while_it_runs(project):
    size = 400_000_000
    release = project / "release"
    command = (f"echo first-line; head -c {size} /dev/zero | tr '\\0' x; echo; echo last-line; i=0; "
               f"while [ ! -e {release} ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i + 1)); done; exit 1")
    write_ws(project / "w", "flood", run=command)
    printed = b"first-line\n" + b"x" * size + b"\nlast-line\n"
    bound = CAP + LOG_SLACK_BYTES + GENEROUS_BYTES_PER_SECOND * LOG_CHECK_SECONDS
    assert bound < size  # without the holes the log would take all of it
    run = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=project,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        spool = wait_for(lambda: running_log(project))
        samples = []

        def printed_all() -> bool:
            st = os.stat(spool)
            samples.append((st.st_size, st.st_blocks * 512))
            return st.st_size >= len(printed)

        wait_for(printed_all, timeout=120)
        assert max(apparent for apparent, _ in samples) == len(printed) and len(samples) > 10
        peak = max(allocated for _, allocated in samples)
        assert peak <= bound, f"the running log took {peak / 1e6:.0f} MB on disk (bound {bound / 1e6:.0f} MB)"
        # Shown as it will be kept, holes and all.
        db = state(project)
        run_id = db.latest_run()["id"]
        db.close()
        shown = subprocess.run([sys.executable, "-m", "agentrun", "logs", run_id, "flood"], cwd=project,
                               capture_output=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout == kept_from(printed)
    finally:
        release.touch()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 1, out + err
    db = state(project)
    [attempt] = db.attempts(db.latest_run()["id"])
    db.close()
    header = f"[agentrun] work: {command}\n".encode()
    output = printed + b"[agentrun] exit code 1: last-line\n"
    assert Path(attempt["log_path"]).read_bytes() == header + kept_from(output)
