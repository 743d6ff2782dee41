"""The built-in agent reads and writes only inside its worktree: a committed symlink that leads
out of it (a file among ``files``, a directory a glob walks into, a related test file) is never
read, sent to the model, written through or logged in the conversation."""

from __future__ import annotations

from pathlib import Path

from fake_llm import FakeLLM, Reply
from gitutil import git
from test_agent import FIX, Look, make_repo, model_entry, run, sr, write_agent_ws, write_config

OUTSIDE_TEXT = "TOP-SECRET-outside-the-worktree-7c1e"


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.py").write_text(f"KEY = '{OUTSIDE_TEXT}'\n")
    (outside / "dir" / "mod.py").write_text(f"VALUE = '{OUTSIDE_TEXT}'\n")
    return outside


def _repo_with_links(tmp_path: Path, server: FakeLLM, **ws_fields) -> tuple[Path, Path]:
    outside = _outside(tmp_path)
    repo = make_repo(tmp_path)
    (repo / "pkg" / "ext.py").symlink_to(outside / "secret.py")
    (repo / "pkg" / "vendor").symlink_to(outside / "dir")
    (repo / "tests" / "test_ext.py").symlink_to(outside / "secret.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "links out of the project")
    write_config(repo, {"fake": model_entry(server.url, "fake-model")})
    write_agent_ws(repo, "fix", **ws_fields)
    return repo, outside


def _sent(server: FakeLLM) -> str:
    return "\n".join(r.prompt_text for r in server.chat_requests)


def test_a_glob_never_reads_through_symlinks_out_of_the_worktree(tmp_path):
    with FakeLLM() as server:
        server.script(Reply(FIX))
        repo, _ = _repo_with_links(tmp_path, server, files=["pkg/**/*.py"])
        proc = run(repo)
        sent = _sent(server)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "return a - b" in sent                    # pkg/calc.py was sent ...
    assert OUTSIDE_TEXT not in sent                  # ... nothing from outside was
    look = Look(repo)
    assert look.status() == {"fix": "done"}
    conversation = (repo / ".agentrun" / "runs" / look.run_id / "conversations" / "fix.1.jsonl").read_text()
    assert OUTSIDE_TEXT not in conversation
    log = Path(look.db.execute("SELECT log_path FROM attempts WHERE ws_id = 'fix'").fetchone()[0]).read_text()
    assert "not read: pkg/ext.py leads outside the project" in log


def test_a_symlink_out_of_the_worktree_named_in_files_fails_before_any_call(tmp_path):
    with FakeLLM() as server:
        repo, _ = _repo_with_links(tmp_path, server, files=["pkg/calc.py", "pkg/ext.py"])
        proc = run(repo)
        requests = list(server.chat_requests)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert requests == []
    look = Look(repo)
    assert "files: 'pkg/ext.py' leads outside the worktree through a symlink" in look.ws("fix")["error"]


def test_an_edit_through_a_symlinked_directory_is_refused_and_writes_nothing_outside(tmp_path):
    escape = sr("VALUE = '" + OUTSIDE_TEXT + "'\n", "VALUE = 'overwritten'\n", path="pkg/vendor/mod.py")
    with FakeLLM() as server:
        server.script(Reply(escape), Reply(escape), Reply(escape), Reply(escape))
        repo, outside = _repo_with_links(tmp_path, server, files=["pkg/**/*.py"])
        proc = run(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (outside / "dir" / "mod.py").read_text() == f"VALUE = '{OUTSIDE_TEXT}'\n"
