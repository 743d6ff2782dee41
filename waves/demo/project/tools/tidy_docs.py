"""Make pydoc's HTML relocatable: repository-relative source links, no links to pages not built."""

import re
import sys
from pathlib import Path


def tidy(directory: Path, root: Path) -> int:
    pages = {p.name for p in directory.glob("*.html")}
    prefix = str(root.resolve()) + "/"
    up = "../" * len(directory.resolve().relative_to(root.resolve()).parts)
    for page in sorted(directory.glob("*.html")):
        html = page.read_text(encoding="utf-8")
        html = html.replace(f'href="file:{prefix}', f'href="{up}').replace(f">{prefix}", ">")
        html = re.sub(r'<a href="([\w.]+\.html)">([^<]*)</a>',
                      lambda m: m.group(0) if m.group(1) in pages else m.group(2), html)
        page.write_text(html, encoding="utf-8")
    print(f"tidied {len(pages)} pages in {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(tidy(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/api"), Path.cwd()))
