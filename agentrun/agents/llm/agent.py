"""The built-in coding agent: an executor that asks a model for edits and verifies them.

One attempt: build the prompt (task, the full target files, outlines of
related files, fitted to the model's window), ask for edits in the model's
format, apply them (all or nothing), run the gates, and send failures back:
malformed or non-matching edits up to ``MAX_FORMAT_RETRIES`` times, failing
gates up to ``max_repairs`` times. Every message, reply and applied edit is
appended to the attempt's conversation file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from agentrun.agents.llm import context
from agentrun.agents.llm import edits
from agentrun.agents.llm import replies
from agentrun.spec import globs
from agentrun.proc.command import AttemptContext, ExecResult
from agentrun.agents.llm.edits import resolve_in_root
from agentrun.agents.llm.patches import UnsafePath
from agentrun.spec.globs import in_scope
from agentrun.agents.llm.call import ContextTooLarge, LLMStop, ModelCaller
from agentrun.spec.models import Model
from agentrun.store.redaction import NO_SECRETS, Secrets
from agentrun.spec.workstream import Workstream

MAX_FORMAT_RETRIES = 3
GATE_OUTPUT_CHARS = 6000

SYSTEM = {
    "diff": """You are a careful senior software engineer editing files in a git repository.
Reply with SEARCH/REPLACE blocks, one per change, in exactly this form:

path/to/file.py
<<<<<<< SEARCH
lines copied exactly from the current file
=======
the new lines
>>>>>>> REPLACE

The SEARCH part must match the file exactly, including indentation; keep it short but unique.
To create a new file, use an empty SEARCH part. Only edit the files listed as editable.
Do not explain; reply with the blocks only.""",
    "whole": """You are a careful senior software engineer editing files in a git repository.
For every file you change, reply with the file's path alone on a line, followed by the COMPLETE
new content of that file in one fenced code block. Never abbreviate or leave parts out.
Only edit the files listed as editable. Do not explain; reply with the files only.""",
}


def expand_targets(root: Path, patterns: tuple[str, ...], refused: list[str] | None = None) -> dict[str, str]:
    """The files a workstream may edit, with their text: the files ``patterns`` match, and a
    literal path that does not exist yet as a new, empty file. Nothing is read through a symlink
    that leads out of ``root`` (or into its .git): such a file is left out, and said so in
    ``refused``; the walk never follows a symlinked directory."""
    found: list[str] = []
    for pattern in patterns:
        parsed = globs.parse(pattern)
        if parsed.glob:
            found += globs.matcher((pattern,)).select(_walk(root, parsed.prefix))
        else:   # a file, a directory (everything below it), or a file still to be created
            found += _walk(root, parsed.text) or [parsed.text]
    out: dict[str, str] = {}
    for rel in dict.fromkeys(found):
        try:
            real = resolve_in_root(root, rel)
        except UnsafePath as exc:
            if refused is not None:
                refused.append(str(exc))
            continue
        if real.is_file():
            out[rel] = real.read_text(errors="replace")
        elif not os.path.lexists(root / rel):   # named in `files`: a file to create
            out[rel] = ""
    return out


def _walk(root: Path, prefix: str) -> list[str]:
    """Paths of the files (and symlinks) under ``root/prefix``, relative to ``root``, sorted."""
    top = root / prefix if prefix else root
    if top.is_symlink() or not top.is_dir():
        return []
    paths = []
    for directory, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        rel_dir = Path(directory).relative_to(root)
        paths += [(rel_dir / name).as_posix() for name in files]
        paths += [(rel_dir / d).as_posix() for d in dirs if (Path(directory) / d).is_symlink()]
    return sorted(paths)


def task_text(ws: Workstream, editable: list[str]) -> str:
    parts = [f"# Task: {ws.title or ws.id}"]
    if ws.description:
        parts.append(ws.description.strip())
    parts.append("Editable files: " + ", ".join(editable))
    if ws.gates:
        parts.append("Your change must make these commands pass: "
                     + "; ".join(g.display() for g in ws.gates))
    return "\n\n".join(parts) + "\n\n"


class Conversation:
    """The attempt's conversation, one JSON record per line, appended as it happens, redacted
    (the task, the files and the gate output it quotes come from the project)."""

    def __init__(self, path: Path, secrets: Secrets = NO_SECRETS):
        self.path = path
        self.secrets = secrets
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, kind: str, **fields) -> None:
        record = {"ts": round(time.time(), 3), "kind": kind, **fields}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(self.secrets.redact(json.dumps(record)) + "\n")


class LLMAgentExecutor:
    def __init__(self, caller: ModelCaller, chain: list[Model], root: Path, conversation: Conversation,
                 run_gates: Callable[[], list[tuple[str, ExecResult, str]]], log: Callable[[str], None],
                 calibration: float = 1.0):
        self.caller = caller
        self.chain = chain
        self.root = root
        self.conversation = conversation
        self.run_gates = run_gates
        self.log = log
        self.calibration = calibration

    def _fit(self, ws: Workstream, task: str, targets: dict[str, str], related) -> tuple[context.Fitted, Model]:
        """Fit the prompt to the first model of the chain whose window holds the task and the targets."""
        last: Exception | None = None
        for model in self.chain:
            cal = context.Calibration(model.id, factor=self.calibration, samples=1)
            try:
                return context.fit_context(task, targets, related, model.context_window, model.max_output_tokens,
                                           calibration=cal), model
            except context.ContextTooSmall as exc:
                last = exc
        raise ContextTooLarge(f"the task and its files do not fit any model of the chain: {last}")

    def execute(self, ws: Workstream, ctx: AttemptContext) -> ExecResult:
        try:
            result = self._execute(ws)
            if result.status == "failed":
                self.caller.forget()   # a retry must not replay this failing conversation from the cache
            return result
        except LLMStop as exc:
            self.log(f"agent stopped: {exc}")
            self.conversation.add("stopped", reason=str(exc))
            return ExecResult(exc.status, error=str(exc))

    def _execute(self, ws: Workstream) -> ExecResult:
        refused: list[str] = []
        targets = expand_targets(self.root, ws.files, refused)
        for reason in refused:
            self.log(f"agent: not read: {reason}")
        if not targets:
            return ExecResult("failed", error=f"no file matches `files` ({', '.join(ws.files)})")
        related = []
        for rel in context.related_files(self.root, [t for t in targets if t.endswith(".py")]):
            path = self.root / rel
            if rel not in targets and path.is_file():
                related.append((rel, path.read_text(errors="replace")))
        fitted, model = self._fit(ws, task_text(ws, sorted(targets)), targets, related)
        fmt = ws.edit_format or model.edit_format
        self.log(f"agent: model {model.name} ({model.id}), {fmt} edits, ~{fitted.tokens} prompt tokens, "
                 f"{len(fitted.included)} related outline(s)")
        messages = [{"role": "system", "content": SYSTEM[fmt]},
                    {"role": "user", "content": fitted.render()}]
        for message in messages:
            self.conversation.add("message", **message)
        format_retries = repairs = 0
        allowed = (lambda path: in_scope(path, ws.files)) if ws.scope == "fail" else None
        while True:
            est = context.estimate_tokens("".join(m["content"] for m in messages))
            reply = self.caller.complete(messages, est_prompt_tokens=est)
            content = reply.response.content
            self.conversation.add("reply", model=reply.model.name, cached=reply.cached, content=content,
                                  prompt_tokens=reply.response.prompt_tokens, est_prompt_tokens=est,
                                  completion_tokens=reply.response.completion_tokens)
            messages.append({"role": "assistant", "content": content})
            parsed = replies.parse_edits(content, fmt)
            feedback = None
            if not parsed.edits:
                feedback = parsed.feedback() if parsed.problems else (
                    "Your reply contained no edits. Reply with the edits in the required format.")
            else:
                applied = edits.apply_edits(self.root, parsed.edits, allowed=allowed)
                if not applied.ok:
                    feedback = applied.feedback()
                else:
                    changed = applied.written + applied.created
                    self.conversation.add("applied", files=changed)
                    self.log(f"agent: applied edits to {', '.join(changed) or 'nothing new'}")
            if feedback is not None:
                format_retries += 1
                self.conversation.add("edit_problem", feedback=feedback)
                if format_retries > MAX_FORMAT_RETRIES:
                    return ExecResult("failed", error=f"the model's edits could not be applied after "
                                                      f"{MAX_FORMAT_RETRIES} corrections")
                self.log(f"agent: edits could not be applied; correction {format_retries} of {MAX_FORMAT_RETRIES}")
                messages.append({"role": "user", "content": feedback})
                self.conversation.add("message", role="user", content=feedback)
                continue
            failing = [(name, result, output) for name, result, output in self.run_gates() if result.status != "ok"]
            if any(r.status == "cancelled" for _, r, _ in failing):
                return ExecResult("cancelled", error="stopped: run interrupted")
            if not failing:
                self.conversation.add("done", repairs=repairs)
                return ExecResult("ok", 0)
            repairs += 1
            if repairs > ws.max_repairs:
                return ExecResult("failed", error=f"gate failed after {ws.max_repairs} repair(s): {failing[0][0]}")
            report = "\n\n".join(f"The command `{name}` failed ({result.error}). Its output ends with:\n"
                                 f"{output}" for name, result, output in failing)
            feedback = f"{report}\n\nFix the problem with further edits to the editable files."
            self.log(f"agent: gate failed, asking for repair {repairs} of {ws.max_repairs}")
            messages.append({"role": "user", "content": feedback})
            self.conversation.add("message", role="user", content=feedback)


def read_new_output(log_fd: int, start: int, secrets: Secrets = NO_SECRETS) -> str:
    """The end of what was written to the log since ``start``, redacted: the last
    ``GATE_OUTPUT_CHARS`` characters, read from the last bytes that can hold them."""
    size = os.fstat(log_fd).st_size
    data = secrets.tail(log_fd, start, size, GATE_OUTPUT_CHARS * 4)  # 4: the most bytes of a UTF-8 character
    return data.decode(errors="replace")[-GATE_OUTPUT_CHARS:]
