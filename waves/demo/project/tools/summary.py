"""Write build/summary.md: what the run's workstreams did and what they produced.

Reads the outputs other workstreams published to $AGENTRUN_RUN_DIR/artifacts/
(see publish.py), the run's event log $AGENTRUN_RUN_DIR/events.jsonl, and the
committed API docs in docs/api/.
"""

import json
import os
import sys
from pathlib import Path

FINAL = {"ws_done": "done", "ws_failed": "failed", "ws_retrying": "retrying", "ws_blocked": "blocked",
         "ws_started": "running"}


def workstream_rows(events_path: Path) -> list[str]:
    state: dict[str, dict] = {}
    for line in events_path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn last line
        kind, ws = event.get("type"), event.get("ws_id")
        if ws and kind in FINAL:
            row = state.setdefault(ws, {"status": "", "attempts": 0, "error": ""})
            row["status"] = FINAL[kind]
            row["attempts"] = max(row["attempts"], event.get("attempt") or 0)
            if kind in ("ws_failed", "ws_retrying"):
                row["error"] = (event.get("error") or f"exit code {event.get('exit_code')}")[:80]
    rows = ["| workstream | status | attempts | note |", "| --- | --- | --- | --- |"]
    for ws, row in sorted(state.items()):
        note = row["error"]
        if row["status"] == "done":
            note = f"done after a retry ({note})" if row["attempts"] > 1 else ""
        rows.append(f"| {ws} | {row['status']} | {row['attempts']} | {note} |")
    return rows


def describe(path: Path) -> str:
    """One line about an artifact, reading the formats this demo produces."""
    if path.name == "coverage.json":
        data = json.loads(path.read_text(encoding="utf-8"))
        t = data["total"]
        tests = data["tests"]["run"]
        return f"line coverage {t['percent']}% ({t['covered']}/{t['lines']} lines, {tests} tests)"
    if path.suffix == ".txt":
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        ran = [ln for ln in lines if ln.startswith("Ran ")]
        return " / ".join(ran[-1:] + lines[-1:]) if ran else (lines[-1] if lines else "(empty)")
    if path.suffix == ".pyz":
        return f"zipapp, {path.stat().st_size:,} bytes"
    return f"{path.stat().st_size:,} bytes"


def main() -> int:
    run_dir = Path(os.environ.get("AGENTRUN_RUN_DIR", "build"))
    out = ["# Demo run summary", ""]
    out.append(f"Run `{os.environ.get('AGENTRUN_RUN_ID', 'n/a')}`, summarised by workstream "
               f"`{os.environ.get('AGENTRUN_WS_ID', 'n/a')}`.")
    events = run_dir / "events.jsonl"
    if events.is_file():
        out += ["", "## Workstreams (as of this step)", ""] + workstream_rows(events)
    out += ["", "## Outputs", ""]
    artifacts = run_dir / "artifacts"
    found = sorted(p for p in artifacts.rglob("*") if p.is_file()) if artifacts.is_dir() else []
    for path in found:
        out.append(f"- `{path.relative_to(artifacts)}`: {describe(path)}")
    docs = sorted(Path("docs/api").glob("*.html"))
    out.append(f"- `docs/api/` (committed): {len(docs)} HTML pages: "
               + ", ".join(p.name for p in docs))
    if not found:
        out.append("- no published artifacts found")
    text = "\n".join(out) + "\n"
    Path("build").mkdir(exist_ok=True)
    Path("build/summary.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
