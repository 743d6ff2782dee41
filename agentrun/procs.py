"""Process groups: start a command in its own session, wait with a timeout, stop the whole tree."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass

KILL_GRACE_SECONDS = 5.0


def proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else None


def is_alive(pid: int | None, start: str | None) -> bool:
    """Is the process with this pid the same one we recorded (not a reused pid)?"""
    if not pid:
        return False
    current = proc_start_time(pid)
    if current is None:
        return False
    if _is_zombie(pid):
        return False
    return start is None or current == start


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return True
    return data[data.rfind(b")") + 2:data.rfind(b")") + 3] == b"Z"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def spawn(argv: list[str], *, cwd: str, env: dict[str, str], log_fd: int) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new session, stdin from /dev/null, output to ``log_fd``."""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


@dataclass
class Exit:
    how: str                  # "exited", "timeout" or "cancelled"
    returncode: int | None    # negative: killed by that signal


def wait(proc: subprocess.Popen, *, timeout: float | None, cancel_fd: int | None,
         heartbeat: float | None = None, on_heartbeat=None, grace: float = KILL_GRACE_SECONDS) -> Exit:
    """Wait for ``proc``; on timeout or when ``cancel_fd`` becomes readable, stop its group.

    A pidfd makes the wait an exact, sleep-free poll. When the leader exits, any
    processes it left behind in its group are killed before it is reaped (the
    zombie leader keeps the group id from being reused).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if cancel_fd is not None:
            poller.register(cancel_fd, select.POLLIN | select.POLLHUP)
        how = "exited"
        while True:
            wait_for = None if deadline is None else max(0.0, deadline - time.monotonic())
            if heartbeat is not None:
                wait_for = heartbeat if wait_for is None else min(wait_for, heartbeat)
            ready = poller.poll(None if wait_for is None else wait_for * 1000)
            fds = {fd for fd, _ in ready}
            if pidfd in fds:
                break
            if cancel_fd is not None and cancel_fd in fds:
                how = "cancelled"
                break
            if deadline is not None and time.monotonic() >= deadline:
                how = "timeout"
                break
            if on_heartbeat is not None:
                on_heartbeat()
        if how == "exited":
            _kill_group(proc.pid, signal.SIGKILL)
        else:
            stop_group(proc.pid, pidfd=pidfd, grace=grace)
        return Exit(how, proc.wait())
    finally:
        os.close(pidfd)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(pgid: int, *, pidfd: int | None = None, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the group, give it ``grace`` seconds, then SIGKILL whatever is left."""
    _kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    if pidfd is not None:
        select.select([pidfd], [], [], grace)
    while group_has_live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_group(pgid, signal.SIGKILL)


def group_has_live_members(pgid: int) -> bool:
    """True if a non-zombie process is in the group (zombies wait for their parent to reap them)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return group_alive(pgid)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2:].split()
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] != b"Z":
            return True
    return False
