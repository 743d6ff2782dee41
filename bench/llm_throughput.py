#!/usr/bin/env python3
"""LLM agent throughput against a rate-limited endpoint: the shared limiter on versus off.

The endpoint is ``tests/fake_llm.py``'s real HTTP server in ``max_concurrent``
mode: a chat request that arrives while ``--server-limit`` (2) are in flight is
answered ``429`` with a seeded ``Retry-After`` of 0.2-0.5 s. Every accepted
request is answered after a seeded per-file delay (``--reply-ms``; by default
two profiles: 50-100 ms, and 500-1000 ms where the model rather than git is
the bottleneck) with a valid edit of the one file the prompt names as
editable (``Editable files: src/mNN.py``): a SEARCH/REPLACE block turning
``VALUE = 0`` into ``VALUE = NN + 1`` (or the whole file, ``--edit-format whole``).

In a fresh scratch git repository under /tmp for every run, ``--n`` (24)
workstreams, each ``agent = "llm"`` on its own file with a one-line gate
(``grep`` for the new value), ``retries = 0``, run with
``agentrun run --parallel --max-workers 8``:

  limiter on    agentrun as shipped: the per-provider cap shared by every
                worker (starts at --max-workers, halves on a 429, +1 on success)
  limiter off   AGENTRUN_LLM_LIMITER=off (read by agentrun.run.attempt.llm_concurrency):
                every worker calls as soon as it has a prompt

Per profile and scenario (``--repeat`` runs each, interleaved): workstreams
done and failed (state DB); done workstreams per minute of the runs' own
clocks (runs.created_at -> finished_at); requests the server received and
how many it refused with 429 (the wasted calls, the server's own count; the
ledger's rate_limit rows are shown beside it as a cross-check); the peak of
requests in flight at the server; failures by cause (the model's circuit
breaker was open, or the rate-limit retries ran out). "server cap/min" is
what the endpoint can serve at most: server-limit / mean reply time. A run
still going after ``--deadline`` seconds is stopped with SIGTERM (agentrun
records it interrupted) and measured up to then.

Seeded: reply delays and Retry-After values; agentrun's own jitter (slot
polling, back-off) is not. Exit 1 (target missed) if, with the limiter, any
workstream did not finish. About 1.5 minutes with the defaults.

    .venv/bin/python bench/llm_throughput.py [--n 24] [--max-workers 8] [--reply-ms 50-100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
from common import agentrun_cmd, bench_env, fmt_table, load_note, make_tmp, remove_unless_kept  # noqa: E402
from fake_llm import FakeLLM, RecordedRequest, Reply, Slow  # noqa: E402

EDITABLE = re.compile(r"^Editable files: (\S+)", re.M)
LIMITER_ENV = "AGENTRUN_LLM_LIMITER"


def limiter_switch() -> bool:
    """Does this agentrun read AGENTRUN_LLM_LIMITER=off? (Only then is the limiter-off scenario run.)"""
    try:
        sys.path.insert(0, str(REPO))
        import inspect

        from agentrun.run import attempt
        fn = getattr(attempt, "llm_concurrency", None)
        return fn is not None and LIMITER_ENV in inspect.getsource(fn)
    except Exception:
        return False


class RateLimitedLLM(FakeLLM):
    """FakeLLM whose concurrency 429s carry a seeded Retry-After drawn from 0.2-0.5 s."""

    def __init__(self, *, seed: int, **kw):
        self._jitter = random.Random(seed)
        self._jitter_lock = threading.Lock()
        super().__init__(**kw)

    @property
    def concurrency_retry_after(self) -> float:
        with self._jitter_lock:
            return round(self._jitter.uniform(0.2, 0.5), 2)

    @concurrency_retry_after.setter
    def concurrency_retry_after(self, value) -> None:
        pass   # FakeLLM.__init__ assigns a fixed value; ours is drawn per answer


def responder(seed: int, lo_ms: int, hi_ms: int):
    """The model: a valid edit of the file the prompt names, after a per-file seeded lo-hi ms."""
    def answer(req: RecordedRequest):
        text = req.prompt_text
        m = EDITABLE.search(text)
        if not m:
            return Reply(content="no editable file named in the prompt")
        path = m.group(1).rstrip(",")
        n = int(re.search(r"(\d+)", path).group(1))
        digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
        delay = (lo_ms + (hi_ms - lo_ms) * digest[0] / 255) / 1000
        system = req.messages[0].get("content", "") if req.messages else ""
        if "SEARCH/REPLACE" in system:
            content = f"{path}\n<<<<<<< SEARCH\nVALUE = 0\n=======\nVALUE = {n + 1}\n>>>>>>> REPLACE\n"
        else:
            content = f"{path}\n```\n{file_text(n, n + 1)}```\n"
        return Slow(delay, Reply(content=content))
    return answer


def file_text(n: int, value: int) -> str:
    return f'"""Module {n}."""\n\nNAME = "m{n:02d}"\nVALUE = {value}\n\n\ndef get():\n    return VALUE\n'


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_project(root: Path, n: int, url: str, edit_format: str) -> Path:
    repo = root / "repo"
    (repo / "src").mkdir(parents=True)
    for i in range(n):
        (repo / "src" / f"m{i:02d}.py").write_text(file_text(i, 0))
    waves = repo / "waves"
    waves.mkdir()
    (waves / "agentrun.toml").write_text(
        "[defaults]\n"
        'model = "fake"\n'
        "retries = 0\n"
        "\n[models.fake]\n"
        'id = "fake-model"\n'
        f'base_url = "{url}"\n'
        'api_key_env = ""\n'
        f'edit_format = "{edit_format}"\n'
        "context_window = 8192\n"
        "max_output_tokens = 512\n"
        "input_cost_per_mtok = 0.1\n"
        "output_cost_per_mtok = 0.3\n")
    for i in range(n):
        path = f"src/m{i:02d}.py"
        (waves / f"m{i:02d}.toml").write_text(
            f'title = "Set VALUE of m{i:02d} to {i + 1}"\n'
            f'description = "In {path}, change VALUE = 0 to VALUE = {i + 1}. Change nothing else."\n'
            'agent = "llm"\n'
            'type = "codegen"\n'
            f'files = ["{path}"]\n'
            f"gates = [\"grep -q '^VALUE = {i + 1}$' {path}\"]\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "add", "-A")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-q", "-m", "init")
    return repo


@dataclass
class Result:
    profile: str
    scenario: str
    done: int
    failed: int
    other: int
    in_run_s: float
    stopped: bool
    requests: int
    refused: int
    ledger_rate_limited: int
    peak: int
    exit_code: int
    breaker_failures: int          # workstreams failed "cooling down": the model's breaker was open
    retry_failures: int            # workstreams failed after the rate-limit retries ran out
    errors: list[str]


def run_scenario(args, root: Path, profile: tuple[int, int], limiter_off: bool, rep: int) -> Result:
    scenario = "limiter off" if limiter_off else "limiter on"
    seed = args.seed + rep
    tag = f"{profile[0]}-{profile[1]}ms"
    with RateLimitedLLM(seed=seed, default=responder(seed, *profile), max_concurrent=args.server_limit) as server:
        repo = make_project(root / f"{tag}-{scenario.replace(' ', '-')}-{rep}", args.n, server.url,
                            args.edit_format)
        env = bench_env()
        env.pop(LIMITER_ENV, None)
        if limiter_off:
            env[LIMITER_ENV] = "off"
        argv = [*agentrun_cmd(), "run", "waves", "--parallel", "--max-workers", str(args.max_workers), "-q"]
        proc = subprocess.Popen(argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        stopped = False
        try:
            out, _ = proc.communicate(timeout=args.deadline)
        except subprocess.TimeoutExpired:
            stopped = True
            proc.send_signal(signal.SIGTERM)      # agentrun stops its workers and records the run interrupted
            out, _ = proc.communicate(timeout=60)
        requests = [r for r in server.requests if r.method == "POST"]
        refused = sum(1 for r in requests if r.rejected)
        peak = server.max_in_flight
    db = sqlite3.connect(f"file:{repo / '.agentrun' / 'state.db'}?mode=ro", uri=True)
    try:
        run_id, created, finished = db.execute("SELECT id, created_at, finished_at FROM runs").fetchone()
        counts = dict(db.execute("SELECT status, COUNT(*) FROM workstreams WHERE run_id = ? GROUP BY status",
                                 (run_id,)).fetchall())
        ledger = dict(db.execute("SELECT status, COUNT(*) FROM llm_calls WHERE run_id = ? GROUP BY status",
                                 (run_id,)).fetchall())
        errors = [r[0] or "" for r in db.execute("SELECT error FROM workstreams WHERE run_id = ? AND "
                                                 "status != 'done'", (run_id,))]
    finally:
        db.close()
    in_run = (finished or time.time()) - created
    done, failed = counts.get("done", 0), counts.get("failed", 0)
    if args.verbose:
        print(f"--- {tag} {scenario} #{rep}: agentrun exit {proc.returncode}\n{out[-3000:]}", flush=True)
    breaker = sum(1 for e in errors if "cooling down" in e)
    return Result(tag, scenario, done, failed, sum(counts.values()) - done - failed, in_run, stopped,
                  len(requests), refused, ledger.get("rate_limit", 0), peak, proc.returncode, breaker,
                  sum(1 for e in errors if "rate_limit" in e and "cooling down" not in e),
                  sorted({e.splitlines()[0][:160] for e in errors if e}))


def _profile(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        out = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI in ms, e.g. 50-100, not {value!r}") from None
    if not 0 <= out[0] <= out[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI, not {value!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24, help="agent workstreams (default 24)")
    ap.add_argument("--max-workers", type=int, default=8)
    ap.add_argument("--server-limit", type=int, default=2, help="requests the fake server serves at once")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--reply-ms", type=_profile, action="append", metavar="LO-HI",
                    help="reply delay range in ms; repeatable (default: 50-100 and 500-1000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per profile and scenario (default 3)")
    ap.add_argument("--edit-format", choices=("diff", "whole"), default="diff")
    ap.add_argument("--deadline", type=float, default=45.0, help="stop a run after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    ap.add_argument("-v", "--verbose", action="store_true", help="print agentrun's output")
    args = ap.parse_args()
    if not 1 <= args.n <= 100:
        ap.error("--n: 1 to 100 (file names are two digits)")
    profiles = args.reply_ms or [(50, 100), (500, 1000)]

    note = load_note()
    root = make_tmp("agentrun-llmbench-")
    switch = limiter_switch()
    offs = [False, True] if switch else [False]
    results: list[Result] = []
    t0 = time.perf_counter()
    try:
        for profile in profiles:
            for rep in range(args.repeat):
                for off in offs:          # interleaved: drifting machine load hits both scenarios alike
                    results.append(run_scenario(args, root, profile, off, rep))
    finally:
        remove_unless_kept(root, args.keep)
    total = time.perf_counter() - t0

    print(f"LLM agent throughput: {args.n} agent workstreams x {args.repeat} runs per row, --max-workers "
          f"{args.max_workers}; the server serves {args.server_limit} requests at once and answers 429 + "
          f"Retry-After 0.2-0.5 s beyond; {args.edit_format} edits; seed {args.seed}")
    if note:
        print(note)
    headers = ["replies", "server cap/min", "scenario", "done", "failed", "done/min", "(min-max)", "requests", "429 sent",
               "wasted", "ledger 429", "peak", "failed: breaker", "failed: retries"]
    rows = []
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.profile, r.scenario), []).append(r)
    for (profile, scenario), rs in groups.items():
        done = sum(r.done for r in rs)
        minutes = sum(r.in_run_s for r in rs) / 60
        rates = [r.done / (r.in_run_s / 60) for r in rs if r.in_run_s > 0]
        requests, refused = sum(r.requests for r in rs), sum(r.refused for r in rs)
        lo, hi = (int(x) for x in profile[:-2].split("-"))
        cap = args.server_limit * 60 / ((lo + hi) / 2000) if hi else float("inf")
        rows.append([profile, f"{cap:.0f}", scenario + (" (stopped)" if any(r.stopped for r in rs) else ""),
                     f"{done}/{args.n * len(rs)}", str(sum(r.failed + r.other for r in rs)),
                     f"{done / minutes:.0f}" if minutes else "-",
                     f"{min(rates):.0f}-{max(rates):.0f}" if rates else "-",
                     str(requests), str(refused), f"{refused / requests * 100:.0f}%" if requests else "-",
                     str(sum(r.ledger_rate_limited for r in rs)), str(max(r.peak for r in rs)),
                     str(sum(r.breaker_failures for r in rs)), str(sum(r.retry_failures for r in rs))])
    print(fmt_table(headers, rows))
    print("done/min: done workstreams per minute of the runs' own clocks (runs.created_at -> finished_at), "
          "summed over the runs; wasted: 429s / requests; peak: most requests in flight at the server")
    seen = set()
    for r in results:
        for e in r.errors:
            key = (r.scenario, re.sub(r"\d+(\.\d+)?", "N", e))
            if key not in seen:
                seen.add(key)
                print(f"  {r.profile} {r.scenario}: failed with: {e}")
    if not switch:
        print(f"note: this agentrun has no way to lift the shared limiter ({LIMITER_ENV}=off read in "
              "agentrun.run.attempt.llm_concurrency); only the limiter-on scenario ran")
    print(f"total benchmark time {total:.0f}s")
    on_failed = sum(r.failed + r.other for r in results if r.scenario == "limiter on")
    if on_failed:
        print(f"TARGET MISSED: with the limiter, {on_failed} workstream(s) did not finish "
              f"(target: every workstream done)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
