"""Process groups: start a command in its own session, wait with a timeout, stop the whole tree."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
import shutil
import signal
import time
from dataclasses import dataclass

KILL_GRACE_SECONDS = 5.0
RECORD_AFTER_SECONDS = 0.05


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


# Signals Python ignores or handles that a command must get with default behaviour.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_home: str | None = None   # the directory this process returns to after each spawn


@functools.lru_cache(maxsize=256)
def _lookup(program: str, path: str) -> str | None:
    return shutil.which(program, path=path)


def _which(program: str, path: str) -> str:
    found = _lookup(program, path)
    if found is None or not os.access(found, os.X_OK):  # gone since it was cached: look again
        _lookup.cache_clear()
        found = _lookup(program, path)
    if found is None:
        raise FileNotFoundError(2, "command not found", program)
    return found


def spawn(argv: list[str], *, cwd: str, env: dict[str, str], log_fd: int) -> int:
    """Start ``argv`` as the leader of a new session, stdin from /dev/null, output to ``log_fd``.

    ``posix_spawn`` rather than ``subprocess.Popen``: it does not copy this
    process's memory (vfork-like), which is most of the cost of a short command.
    The executable is looked up in the command's own PATH, as Popen does. Raises
    OSError when it cannot be started.
    """
    program = argv[0]
    if "/" not in program:
        program = _which(program, env.get("PATH", os.defpath))
    # posix_spawn has no working-directory action: change ours around the call
    # (workers are single-threaded and use absolute paths otherwise).
    global _home
    if _home is None:
        _home = os.getcwd()
    os.chdir(cwd)
    try:
        return os.posix_spawn(program, argv, env, setsid=True, setsigdef=_DEFAULT_SIGNALS,
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, log_fd, 1),
                                            (os.POSIX_SPAWN_DUP2, log_fd, 2)])
    finally:
        os.chdir(_home)


@dataclass
class Exit:
    how: str                  # "exited", "timeout" or "cancelled"
    returncode: int | None    # negative: killed by that signal


def wait(pid: int, *, timeout: float | None, cancel_fd: int | None,
         heartbeat: float | None = None, on_heartbeat=None, on_running=None, check_output=None,
         grace: float = KILL_GRACE_SECONDS) -> Exit:
    """Wait for process ``pid``; on timeout or when ``cancel_fd`` becomes readable, stop its group.

    ``on_running`` is called once if the command is still running after
    ``RECORD_AFTER_SECONDS``: recording a pid costs a transaction, and most short
    commands are gone before that (anything started for a run is found by its
    environment anyway, see ``recovery.run_processes``). ``on_heartbeat`` is called
    every ``heartbeat`` seconds. ``check_output`` is called first with ``on_running``
    (no wake-up of its own for short commands), then whenever it asks: it returns the
    seconds until its next call, None for none. A pidfd makes the wait an
    exact, sleep-free poll. When the leader exits, any
    processes it left behind in its group are killed before it is reaped (the
    zombie leader keeps the group id from being reused).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if cancel_fd is not None:
            poller.register(cancel_fd, select.POLLIN | select.POLLHUP)
        try:
            how = _wait_loop(poller, pidfd, cancel_fd, deadline, heartbeat, on_heartbeat, on_running,
                             check_output)
        except BaseException:  # whatever interrupts the wait, the command does not outlive it
            stop_group(pid, pidfd=pidfd, grace=grace)
            os.waitpid(pid, 0)
            raise
        if how == "exited":
            _kill_group(pid, signal.SIGKILL)
        else:
            stop_group(pid, pidfd=pidfd, grace=grace)
        _, status = os.waitpid(pid, 0)
        return Exit(how, os.waitstatus_to_exitcode(status))
    finally:
        os.close(pidfd)


def _wait_loop(poller, pidfd: int, cancel_fd: int | None, deadline: float | None, heartbeat: float | None,
               on_heartbeat, on_running, check_output) -> str:
    now = time.monotonic()
    record_at = None if on_running is None else now + RECORD_AFTER_SECONDS
    beat_at = None if heartbeat is None or on_heartbeat is None else now + heartbeat
    check_at = None if check_output is None else now + RECORD_AFTER_SECONDS
    while True:
        due = min((t for t in (deadline, record_at, beat_at, check_at) if t is not None), default=None)
        ready = poller.poll(None if due is None else max(0.0, due - time.monotonic()) * 1000)
        fds = {fd for fd, _ in ready}
        if pidfd in fds:
            return "exited"
        if cancel_fd is not None and cancel_fd in fds:
            return "cancelled"
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "timeout"
        if record_at is not None and now >= record_at:
            record_at = None
            on_running()
        if beat_at is not None and now >= beat_at:
            beat_at = now + heartbeat
            on_heartbeat()
        if check_at is not None and now >= check_at:
            delay = check_output()
            check_at = None if delay is None else now + delay


_FALLOC_FL_KEEP_SIZE = 0x01   # <linux/falloc.h>: Python's os module has no names for these
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give bytes [offset, offset + length) of the file ``fd`` back to the file system; its size
    stays, and they read as zeros. False where the file cannot have holes (its file system does
    not support them, or ``fd`` is not a regular file); other errors raise OSError."""
    fallocate = _fallocate()
    while fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV, errno.ESPIPE):
            return False
        if code != errno.EINTR:
            raise OSError(code, f"fallocate: {os.strerror(code)}")
    return True


@functools.cache
def _fallocate():
    libc = ctypes.CDLL(None, use_errno=True)
    call = getattr(libc, "fallocate64", None) or libc.fallocate  # 64-bit offsets on 32-bit systems too
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    return call


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(pgid: int, *, pidfd: int | None = None, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the group, give it ``grace`` seconds, then SIGKILL whatever is left."""
    _kill_group(pgid, signal.SIGTERM)
    _kill_group(pgid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
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
