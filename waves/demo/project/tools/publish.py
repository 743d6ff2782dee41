"""Copy build outputs to the agentrun run directory, where later workstreams can read them.

Under agentrun each workstream may run in its own git worktree, whose ignored
files (build/, dist/) vanish with it; $AGENTRUN_RUN_DIR is shared by the whole
run. Outside agentrun this does nothing.
"""

import os
import shutil
import sys
from pathlib import Path


def main(paths: list[str]) -> int:
    run_dir, ws_id = os.environ.get("AGENTRUN_RUN_DIR"), os.environ.get("AGENTRUN_WS_ID")
    if not run_dir or not ws_id:
        print("publish: not running under agentrun; outputs stay where they are")
        return 0
    dest = Path(run_dir) / "artifacts" / ws_id
    dest.mkdir(parents=True, exist_ok=True)
    for path in map(Path, paths):
        if path.is_dir():  # its contents
            shutil.copytree(path, dest, dirs_exist_ok=True)
        elif path.is_file():
            shutil.copy2(path, dest / path.name)
        else:
            print(f"publish: {path} does not exist", file=sys.stderr)
            return 1
        print(f"published {path} -> {dest if path.is_dir() else dest / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
