"""Verification of an attempt: commit its work, check the changes against its scope, run its
gates (recording each result), and hand out free ports for the commands that need one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from agentrun.git import repo as git
from agentrun.git.worktrees import Workspace
from agentrun.spec.globs import in_scope
from agentrun.proc.command import AttemptContext, ExecResult, run_command
from agentrun.spec.workstream import Workstream


@dataclass
class GateRunner:
    """Runs a workstream's gates and records each result (DB and event log)."""

    ws: Workstream
    attempt: int
    actx: AttemptContext
    record: object          # callable(phase, gate, status, exit_code, started, finished)
    log: object             # callable(str)

    def run(self, phase: str, workdir: Path, excused: set[str] = frozenset()) -> dict[str, ExecResult]:
        """Run every gate; a failure of a gate in ``excused`` (or any failure in the baseline
        phase) is recorded as ``pre-existing``."""
        results: dict[str, ExecResult] = {}
        for gate in self.ws.gates:
            name = gate.display()
            self.log(f"gate ({phase}): {name}")
            started = time.time()
            result = run_command(gate, replace(self.actx, workdir=str(workdir)), timeout=self.ws.timeout)
            results[name] = result
            status = "passed" if result.status == "ok" else result.status
            if status in ("failed", "timeout") and (phase == "baseline" or name in excused):
                status = "pre-existing"
            self.record(phase, name, status, result.exit_code, started, time.time())
            self.log(f"gate ({phase}) {status}: {name}")
            if result.status == "cancelled":
                break
        return results


def verify(ws: Workstream, wsp: Workspace, gates: GateRunner, workdir: Path, message: str,
           preexisting: set[str]) -> ExecResult | None:
    """Commit the attempt's work and check it. None when verified, else the failure."""
    if wsp.isolated:
        wsp.commit = git.commit_all(wsp.path, message) or wsp.base
        wsp.changed = git.changed_files(wsp.path, wsp.base, wsp.commit) if wsp.commit != wsp.base else []
        leaked = sorted(set(wsp.changed) & set(wsp.copied))
        if leaked:   # the command committed them itself: no ref may keep that commit
            git.update_ref(wsp.path, f"refs/heads/{wsp.branch}", wsp.base)
            return ExecResult("failed", error=f"copy_untracked: the result contains the copied file(s) "
                                              f"{', '.join(leaked)}; copied files are never part of a result")
        if ws.changes_expected and not wsp.changed:
            return ExecResult("failed", error="no changes: the command exited 0 but changed no file "
                                              "(set expect_changes = false for read-only work)")
        outside = [f for f in wsp.changed if ws.files and not in_scope(f, ws.files)]
        if outside and ws.scope != "off":
            note = f"changed files outside `files`: {', '.join(outside[:10])}"
            if ws.scope == "fail":
                return ExecResult("failed", error=f"scope: {note}")
            gates.log(f"warning: scope: {note}")
    results = gates.run("verify", workdir, preexisting)
    for name, result in results.items():
        if result.status == "cancelled":
            return result
        if result.status != "ok" and name not in preexisting:
            return ExecResult("failed", result.exit_code, result.signal, f"gate failed: {name} ({result.error})")
    return None


def free_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
