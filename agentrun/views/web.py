"""``agentrun monitor --web``: the live view as a small web page, a JSON API and Prometheus metrics.

Standard library only (``http.server``), no external assets: one page with
inline CSS and JS that fetches ``/api/runs/<id>`` every 2 s (and still shows
the data without JS). Read-only, like the rest of ``monitor``: one read-only
DB connection, used under a lock by the request threads.

Routes: ``/`` (the run given on the command line, else the latest),
``/runs/<id>``, ``/api/runs``, ``/api/runs/<id>`` (``latest`` works too),
``/metrics``. Anything else is a 404.

Only requests for a name this server answers to get an answer (``HostPolicy``),
so that a web page cannot read run data by DNS rebinding; others get a 421.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qs, quote, unquote, urlsplit

from agentrun.spec.durations import format_duration
from agentrun.errors import UsageError
from agentrun.store.layout import Layout
from agentrun.views.monitor import (UsageTracker, last_events, load_view, orchestrator_state, ordered_statuses, recent_runs,
                      row_elapsed)
from agentrun.views.progress import format_event
from agentrun.store.state import StateStore
from agentrun.views.status import STATUS_ORDER

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
RECENT_RUNS = 20
ROW_LIMIT = 200
EVENTS_LIMIT = 20
JSON_TYPE = "application/json; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
               "base-uri 'none'; form-action 'none'")


# --- JSON ------------------------------------------------------------------------------
def _run_fields(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    for key in ("options", "notes"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out


def runs_json(store: StateStore, limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for r in recent_runs(store, limit):
        state, age = orchestrator_state(r, now)
        out.append({"id": r["id"], "status": r["status"], "created_at": r["created_at"],
                    "finished_at": r["finished_at"], "elapsed_s": (r["finished_at"] or now) - r["created_at"],
                    "max_workers": r["max_workers"], "schedule": r["schedule"], "counts": r["counts"],
                    "total": sum(r["counts"].values()), "orchestrator": state})
    return out


def run_json(store: StateStore, layout: Layout, run_id: str, limit: int = ROW_LIMIT,
             n_events: int = EVENTS_LIMIT, usage: UsageTracker | None = None) -> dict[str, Any] | None:
    view = load_view(store, run_id, row_limit=limit, usage=usage or UsageTracker())
    if view is None:
        return None
    state, age = view.orchestrator()
    usage = view.usage
    rows = []
    for r in view.rows:
        item = {"ws_id": r["ws_id"], "status": r["status"], "attempt": r["attempt"], "wave": r["wave"] + 1,
                "started_at": r["started_at"], "finished_at": r["finished_at"],
                "elapsed_s": row_elapsed(r, view.now), "estimate_s": r["estimate"], "error": r["error"]}
        if usage is not None:
            item["tokens"], item["cost_usd"] = usage.get(r["ws_id"], (0, 0.0))
        rows.append(item)
    events = last_events(layout.events_path(run_id), n_events)
    total = view.usage_total
    return {
        "run": _run_fields(view.run), "counts": view.counts, "total": view.total, "elapsed_s": view.elapsed,
        "eta_s": view.eta,
        "orchestrator": {"state": state, "pid": view.run["orchestrator_pid"], "heartbeat_age_s": age},
        "usage": {"tokens": total[0], "cost_usd": total[1]} if total else None,
        "workstreams": rows, "workstreams_shown": len(rows), "events": events,
        "event_lines": [format_event(e) for e in events],
    }


# --- Prometheus ---------------------------------------------------------------------
def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Families:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], Any]]) -> None:
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")


def metrics_text(store: StateStore, run_id: str | None = None, limit: int = RECENT_RUNS,
                 tracker: UsageTracker | None = None) -> str:
    """Gauges and counters for the recent runs (or just ``run_id``), in the text exposition format."""
    now = time.time()
    runs = recent_runs(store, limit, run_id)
    ids = [r["id"] for r in runs]
    marks = ", ".join("?" * len(ids))
    attempts: dict[str, dict[str, int]] = {rid: {} for rid in ids}
    usage: dict[str, tuple[int, float]] | None = None
    with store.snapshot() as db:
        by_status = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        if ids:
            for rid, status, n in db.execute(f"SELECT run_id, status, COUNT(*) FROM attempts WHERE run_id IN "
                                             f"({marks}) GROUP BY run_id, status", ids):
                attempts[rid][status] = n
            tracker = tracker or UsageTracker()
            usage = {rid: _sum(tracker.read(db, rid)) for rid in ids}
            if all(u is None for u in usage.values()):
                usage = None
    views = {r["id"]: load_view(store, r["id"], row_limit=0, now=now)
             for r in runs if r["status"] == "running"}
    f = _Families()
    f.family("agentrun_runs", "gauge", "Recorded runs by status.",
             [({"status": s}, n) for s, n in sorted(by_status.items())])
    f.family("agentrun_run_info", "gauge", "A run (value 1), labelled with its status and schedule.",
             [({"run_id": r["id"], "status": r["status"], "schedule": r["schedule"]}, 1) for r in runs])
    f.family("agentrun_run_running", "gauge", "1 while the run is recorded as running.",
             [({"run_id": r["id"]}, int(r["status"] == "running")) for r in runs])
    f.family("agentrun_run_start_time_seconds", "gauge", "When the run was created (Unix time).",
             [({"run_id": r["id"]}, r["created_at"]) for r in runs])
    f.family("agentrun_run_elapsed_seconds", "gauge", "Wall time of the run so far (or in all, once finished).",
             [({"run_id": r["id"]}, (r["finished_at"] or now) - r["created_at"]) for r in runs])
    f.family("agentrun_run_max_workers", "gauge", "Workers the run uses at most.",
             [({"run_id": r["id"]}, r["max_workers"]) for r in runs])
    samples = []
    for r in runs:
        statuses = list(STATUS_ORDER) + [s for s in ordered_statuses(r["counts"]) if s not in STATUS_ORDER]
        samples += [({"run_id": r["id"], "status": s}, r["counts"].get(s, 0)) for s in statuses]
    f.family("agentrun_workstreams", "gauge", "Workstreams of the run by status.", samples)
    f.family("agentrun_run_workstreams", "gauge", "Workstreams in the run.",
             [({"run_id": r["id"]}, sum(r["counts"].values())) for r in runs])
    f.family("agentrun_attempts_total", "counter", "Attempts started, by their status.",
             [({"run_id": rid, "status": s}, n) for rid in ids for s, n in sorted(attempts[rid].items())])
    live = [r for r in runs if r["status"] == "running" and views.get(r["id"]) is not None]
    f.family("agentrun_run_eta_seconds", "gauge", "Estimated seconds left (remaining estimates / workers).",
             [({"run_id": r["id"]}, views[r["id"]].eta) for r in live])
    states = {r["id"]: orchestrator_state(r, now) for r in live}
    f.family("agentrun_orchestrator_up", "gauge", "1 if the orchestrator of a running run is alive, 0 if gone.",
             [({"run_id": rid}, int(st != "gone")) for rid, (st, _) in states.items()])
    f.family("agentrun_orchestrator_heartbeat_age_seconds", "gauge", "Seconds since the orchestrator's heartbeat.",
             [({"run_id": rid}, age) for rid, (_, age) in states.items() if age is not None])
    if usage is not None:
        f.family("agentrun_llm_tokens_total", "counter", "LLM tokens (prompt + completion) used by the run.",
                 [({"run_id": rid}, u[0]) for rid, u in usage.items() if u is not None])
        f.family("agentrun_llm_cost_usd_total", "counter", "LLM cost of the run in US dollars.",
                 [({"run_id": rid}, u[1]) for rid, u in usage.items() if u is not None])
    return "\n".join(f.lines) + "\n"


def _sum(usage: dict[str, tuple[int, float]] | None) -> tuple[int, float] | None:
    if not usage:
        return None
    return sum(t for t, _ in usage.values()), sum(c for _, c in usage.values())


# --- HTML ----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def live_html(d: dict[str, Any]) -> str:
    """The inner HTML of the live section; the page's script builds the same from the JSON."""
    run = d["run"]
    orch = d["orchestrator"]
    head = [f'<span class="rid">run {_e(run["id"])}</span>',
            f'<span class="badge s-{_e(run["status"])}">{_e(run["status"])}</span>',
            f'<span>elapsed {_e(format_duration(d["elapsed_s"]))}</span>']
    if d["eta_s"] is not None:
        head.append(f'<span>eta {_e(format_duration(d["eta_s"]))}</span>')
    head.append(f'<span>workers {_e(run["max_workers"])}</span>')
    if orch["state"] == "gone":
        head.append(f'<span class="warn">orchestrator is gone; run <code>agentrun recover {_e(run["id"])}</code>'
                    '</span>')
    elif orch["state"] == "stale":
        head.append(f'<span class="warn">no heartbeat for {_e(format_duration(orch["heartbeat_age_s"]))}</span>')
    counts = d["counts"]
    chips = [f'<span class="chip s-{_e(s)}">{_e(s)} {_e(counts[s])}</span>' for s in ordered_statuses(counts)]
    chips.append(f'<span class="chip">total {_e(d["total"])}</span>')
    if d["usage"]:
        chips.append(f'<span class="chip">tokens {d["usage"]["tokens"]:,}</span>')
        chips.append(f'<span class="chip">cost ${d["usage"]["cost_usd"]:.2f}</span>')
    usage = d["usage"] is not None
    cols = ["workstream", "state", "try", "wave", "elapsed"] + (["tokens", "cost"] if usage else []) + ["note"]
    body = []
    for w in d["workstreams"]:
        cells = [_e(w["ws_id"]), f'<span class="badge s-{_e(w["status"])}">{_e(w["status"])}</span>',
                 _e(w["attempt"]), _e(w["wave"]), _e(format_duration(w["elapsed_s"]))]
        if usage:
            cells += [_e(f'{w.get("tokens", 0):,}'), _e(f'${w.get("cost_usd", 0.0):.2f}')]
        note = (w["error"] or "").strip().splitlines()[0] if w["error"] and w["status"] != "done" else ""
        cells.append(_e(note))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    more = d["total"] - d["workstreams_shown"]
    return (f'<div class="head">{" ".join(head)}</div>'
            f'<div class="counts">{" ".join(chips)}</div>'
            "<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr></thead>"
            f'<tbody>{"".join(body)}</tbody></table>'
            + (f'<p class="more">&hellip; {more} more</p>' if more > 0 else "")
            + '<h2>Recent events</h2><pre class="events">' + _e("\n".join(d["event_lines"])) + "</pre>")


def page_html(runs: list[dict[str, Any]], data: dict[str, Any] | None, api: str, title: str) -> str:
    nav = " ".join(f'<a class="s-{_e(r["status"])}" href="/runs/{_e(quote(r["id"]))}">{_e(r["id"])} '
                   f'({_e(r["status"])})</a>' for r in runs)
    live = live_html(data) if data is not None else '<p class="more">no runs recorded yet</p>'
    return (_PAGE.replace("{title}", _e(title)).replace("{api}", _e(api)).replace("{nav}", nav)
            .replace("{live}", live))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#1d2330;background:#fafbfc}
h1{font-size:1.2em;margin:0 0 .4em}h2{font-size:1em;margin:1.2em 0 .4em}
nav a{margin-right:.8em;font-size:.85em;color:#445;text-decoration:none}nav a:hover{text-decoration:underline}
.head{font-size:1.1em;margin:.8em 0}.head span{margin-right:1em}.rid{font-weight:600}
.counts{margin:.4em 0 1em}.chip{display:inline-block;padding:.1em .6em;margin:0 .3em .3em 0;border-radius:1em;
background:#e8ebf0}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.25em .6em;
border-bottom:1px solid #e3e6ea;white-space:nowrap}td:last-child{white-space:normal;color:#a33}
th{font-weight:600;background:#f0f2f5}
.badge{padding:.05em .5em;border-radius:.3em;background:#e8ebf0}
.s-running{background:#d7e8ff;color:#0b4fa8}.s-done{background:#dcf3e2;color:#17693a}
.s-failed,.s-conflict,.s-crashed{background:#fde0e0;color:#a31b1b}
.s-blocked,.s-interrupted,.s-lost{background:#fff0d6;color:#8a5300}.s-retrying{background:#f3e8ff;color:#6a2ca8}
nav a.s-running,nav a.s-done,nav a.s-failed,nav a.s-interrupted{background:none}
.warn{color:#a31b1b;font-weight:600}.more{color:#667}
pre.events{background:#fff;border:1px solid #e3e6ea;padding:.6em;overflow-x:auto;font-size:.85em}
footer{margin-top:1.5em;color:#889;font-size:.85em}footer a{color:#667}
</style></head>
<body data-api="{api}">
<h1>agentrun monitor</h1>
<nav>{nav}</nav>
<main id="live">{live}</main>
<footer><span id="note">refreshes every 2 s</span> &middot; <a href="{api}">JSON</a> &middot;
<a href="/api/runs">runs</a> &middot; <a href="/metrics">metrics</a></footer>
<script>
"use strict";
const api = document.body.dataset.api;
const order = ["running","retrying","crashed","lost","failed","conflict","interrupted","ready","pending",
               "blocked","done"];
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function dur(s) {
  if (s === null || s === undefined) return "-";
  if (s < 10) return s.toFixed(1) + "s";
  s = Math.round(s);
  if (s < 60) return s + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
}
function statuses(counts) {
  const known = order.filter(s => counts[s]);
  return known.concat(Object.keys(counts).filter(s => !order.includes(s) && counts[s]).sort());
}
function render(d) {
  const live = document.getElementById("live");
  const frag = document.createDocumentFragment();
  const run = d.run, head = el("div", "head");
  head.append(el("span", "rid", "run " + run.id), el("span", "badge s-" + run.status, run.status),
              el("span", null, "elapsed " + dur(d.elapsed_s)));
  if (d.eta_s !== null) head.append(el("span", null, "eta " + dur(d.eta_s)));
  head.append(el("span", null, "workers " + run.max_workers));
  if (d.orchestrator.state === "gone") {
    const w = el("span", "warn", "orchestrator is gone; run ");
    w.append(el("code", null, "agentrun recover " + run.id));
    head.append(w);
  } else if (d.orchestrator.state === "stale") {
    head.append(el("span", "warn", "no heartbeat for " + dur(d.orchestrator.heartbeat_age_s)));
  }
  const counts = el("div", "counts");
  for (const s of statuses(d.counts)) counts.append(el("span", "chip s-" + s, s + " " + d.counts[s]), " ");
  counts.append(el("span", "chip", "total " + d.total));
  if (d.usage) {
    counts.append(" ", el("span", "chip", "tokens " + d.usage.tokens.toLocaleString("en-US")),
                  " ", el("span", "chip", "cost $" + d.usage.cost_usd.toFixed(2)));
  }
  const table = el("table"), thead = el("thead"), hr = el("tr"), tbody = el("tbody");
  const cols = ["workstream", "state", "try", "wave", "elapsed"].concat(d.usage ? ["tokens", "cost"] : [], ["note"]);
  for (const c of cols) hr.append(el("th", null, c));
  thead.append(hr);
  for (const w of d.workstreams) {
    const tr = el("tr"), state = el("td");
    state.append(el("span", "badge s-" + w.status, w.status));
    tr.append(el("td", null, w.ws_id), state, el("td", null, w.attempt), el("td", null, w.wave),
              el("td", null, dur(w.elapsed_s)));
    if (d.usage) tr.append(el("td", null, (w.tokens || 0).toLocaleString("en-US")),
                           el("td", null, "$" + (w.cost_usd || 0).toFixed(2)));
    const note = (w.error && w.status !== "done") ? w.error.trim().split("\\n")[0] : "";
    tr.append(el("td", null, note));
    tbody.append(tr);
  }
  table.append(thead, tbody);
  frag.append(head, counts, table);
  const more = d.total - d.workstreams_shown;
  if (more > 0) frag.append(el("p", "more", "\\u2026 " + more + " more"));
  frag.append(el("h2", null, "Recent events"), el("pre", "events", d.event_lines.join("\\n")));
  live.replaceChildren(frag);
}
async function tick() {
  const note = document.getElementById("note");
  try {
    const r = await fetch(api, {cache: "no-store"});
    if (r.ok) { render(await r.json()); note.textContent = "updated " + new Date().toLocaleTimeString(); }
    else note.textContent = "no such run (yet)";
  } catch (e) {
    note.textContent = "monitor unreachable; retrying";
  } finally {
    setTimeout(tick, 2000);
  }
}
setTimeout(tick, 2000);
</script>
</body></html>
"""


# --- the server ------------------------------------------------------------------------
# A Host header: a name or IPv4 address, or an IPv6 address in brackets; then maybe a port.
_HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` headers the monitor answers: the defence against DNS rebinding, where a page
    from evil.example.com re-points its own name at 127.0.0.1 and reads what comes back.

    Always: loopback names and addresses (``localhost``, ``*.localhost``, 127.0.0.0/8, ``[::1]``),
    which nobody outside this machine can point anywhere. With ``--host H``: also H as given. With
    ``--host 0.0.0.0`` or ``::`` (every interface: exposure the user chose): also any IP address (a
    page whose origin is an address is no rebinding) and this machine's host names; other names
    are still refused. A request without a Host header (HTTP/1.0) is answered only when it comes
    from this machine.
    """

    names: frozenset[str] = frozenset()     # answered besides loopback names
    any_address: bool = False

    @classmethod
    def for_listen(cls, listen: str | None) -> HostPolicy:
        """The policy for ``--host listen`` (None: not given)."""
        if listen is None:
            return cls()
        address = _address(listen)
        if address is not None and address.is_unspecified:
            return cls(frozenset(_normal(n) for n in (socket.gethostname(), socket.getfqdn()) if n), any_address=True)
        return cls(frozenset({_normal(listen)}))

    def allows(self, hosts: list[str], client: str) -> bool:
        """``hosts``: the request's Host headers; ``client``: the address it came from."""
        if not hosts:
            return is_loopback(client)
        match = _HOST_HEADER.fullmatch(hosts[0].strip().lower()) if len(hosts) == 1 else None
        if match is None:
            return False
        name = _normal(match["v6"] or match["name"])
        return is_loopback(name) or name in self.names or (self.any_address and _address(name) is not None)


def _normal(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(_normal(host))
    except ValueError:
        return None


class MonitorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: StateStore, layout: Layout, run_id: str | None,
                 hosts: HostPolicy = HostPolicy()):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.hosts = hosts
        self.store = store
        self.layout = layout
        self.run_id = run_id
        self.lock = threading.Lock()      # one read-only connection, one request at a time
        self.usage = UsageTracker()       # guarded by the lock too
        super().__init__(address, Handler)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that went away is not worth a traceback

    # Each route returns (status, content type, body text).
    def route(self, raw_path: str) -> tuple[int, str, str]:
        parts = urlsplit(raw_path)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query)
        if path == "/":
            return self._page(self.run_id)
        if path.startswith("/runs/"):
            return self._page(unquote(path[len("/runs/"):]), explicit=True)
        if path == "/api/runs":
            with self.lock:
                return 200, JSON_TYPE, _dumps(runs_json(self.store, _int(query, "limit", RECENT_RUNS)))
        if path.startswith("/api/runs/"):
            run_id = self._resolve(unquote(path[len("/api/runs/"):]))
            data = None
            if run_id is not None:
                with self.lock:
                    data = run_json(self.store, self.layout, run_id, _int(query, "limit", ROW_LIMIT),
                                    usage=self.usage)
            if data is None:
                return 404, JSON_TYPE, _dumps({"error": f"unknown run id '{unquote(path[10:])}'"})
            return 200, JSON_TYPE, _dumps(data)
        if path == "/metrics":
            with self.lock:
                return 200, METRICS_TYPE, metrics_text(self.store, self.run_id, tracker=self.usage)
        if path.startswith("/api/"):
            return 404, JSON_TYPE, _dumps({"error": f"no such endpoint: {parts.path}"})
        return 404, TEXT_TYPE, "404 not found\n"

    def _resolve(self, run_id: str) -> str | None:
        if run_id != "latest":
            return run_id
        with self.lock:
            row = self.store.latest_run()
        return row["id"] if row is not None else None

    def _page(self, run_id: str | None, explicit: bool = False) -> tuple[int, str, str]:
        with self.lock:
            runs = runs_json(self.store)
            target = run_id or (runs[0]["id"] if runs else None)
            data = run_json(self.store, self.layout, target, usage=self.usage) if target else None
        if explicit and data is None:
            return 404, TEXT_TYPE, f"404: unknown run id '{run_id}'\n"
        api = f"/api/runs/{quote(target)}" if run_id else "/api/runs/latest"
        title = f"agentrun {target}" if target else "agentrun monitor"
        return 200, HTML_TYPE, page_html(runs, data, api, title)


class Handler(BaseHTTPRequestHandler):
    server: MonitorServer
    server_version = "agentrun-monitor"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # nothing per request

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        if not self.server.hosts.allows(self.headers.get_all("Host") or [], self.client_address[0]):
            status, ctype, text = 421, TEXT_TYPE, ("421 misdirected request: this monitor answers only requests "
                                                  "for the names it serves (localhost by default)\n")
        else:
            try:
                status, ctype, text = self.server.route(self.path)
            except Exception as exc:  # e.g. the DB became unreadable: an error response, not a traceback
                status, ctype, text = 500, JSON_TYPE, _dumps({"error": f"{type(exc).__name__}: {exc}"})
        data = text.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if ctype == HTML_TYPE:
                self.send_header("Content-Security-Policy", PAGE_POLICY)
            self.end_headers()
            if body:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _int(query: dict[str, list[str]], key: str, default: int) -> int:
    try:
        return max(0, min(int(query[key][0]), 10_000))
    except (KeyError, ValueError, IndexError):
        return default


def is_loopback(host: str) -> bool:
    """A name or address that can only mean this machine."""
    name = _normal(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    if address is None:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1: a client of a dual-stack server
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(store: StateStore, layout: Layout, run_id: str | None, host: str | None = None,
          port: int = DEFAULT_PORT, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Serve until interrupted, on ``host`` (None: DEFAULT_HOST, answering loopback names only); the
    first line of ``out`` is the URL. Returns the exit code (0)."""
    hosts = HostPolicy.for_listen(host)
    host = host or DEFAULT_HOST
    try:
        server = MonitorServer((host, port), store, layout, run_id, hosts)
    except OSError as exc:
        raise UsageError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        out.write(url_for(host, server.server_address[1]) + "\n")
        out.flush()
        if not is_loopback(host):
            err.write(f"warning: listening on {host}: run data is exposed, without authentication, to anyone "
                      "who can reach this address\n")
            err.flush()
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
