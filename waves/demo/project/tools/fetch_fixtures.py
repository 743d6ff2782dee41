"""Stand-in for downloading test fixtures: fails on the first attempt, like a flaky network.

Under agentrun, attempt 1 ($AGENTRUN_ATTEMPT=1) exits 1 with a "transient"
error; later attempts (and runs outside agentrun) write data/fixtures.json.
"""

import json
import os
import sys
import time
from pathlib import Path

# The "remote" corpus, with the statistics its publisher computed by hand.
CORPUS = [
    {"name": "pangram", "text": "The quick brown fox jumps over the lazy dog. The dog sleeps.",
     "words": 12, "unique": 9, "sentences": 2, "top": ["the", 3]},
    {"name": "contractions", "text": "It's late; isn't it? It's fine.\nWe'll go.",
     "words": 8, "unique": 7, "sentences": 3, "top": ["it's", 2]},
    {"name": "numbers", "text": "1 2 3 go! 1 2 3 stop.",
     "words": 8, "unique": 5, "sentences": 2, "top": ["1", 2]},
    {"name": "empty", "text": "", "words": 0, "unique": 0, "sentences": 0, "top": None},
]


def main() -> int:
    attempt = os.environ.get("AGENTRUN_ATTEMPT")
    print(f"fetching fixtures (attempt {attempt or 'n/a'}) ...", flush=True)
    time.sleep(0.3)  # "network latency"
    if attempt == "1":
        print("simulated transient failure (attempt 1), will succeed on retry", file=sys.stderr)
        return 1
    out = Path("data/fixtures.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": "demo corpus v1", "documents": CORPUS}, indent=2) + "\n",
                   encoding="utf-8")
    print(f"wrote {out} ({len(CORPUS)} documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
