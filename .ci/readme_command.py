"""Print the README's test command: the one line of the ```bash block after the CI marker."""

import sys
from pathlib import Path

MARKER = "<!-- ci: test command -->"


def readme_command(text: str) -> str:
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == MARKER]
    if len(starts) != 1:
        raise SystemExit(f"expected exactly one {MARKER!r} line in the README, found {len(starts)}")
    rest = lines[starts[0] + 1:]
    try:
        open_at = next(i for i, line in enumerate(rest) if line.strip())
    except StopIteration:
        raise SystemExit(f"nothing follows {MARKER!r}") from None
    if rest[open_at].strip() != "```bash":
        raise SystemExit(f"{MARKER!r} must be followed by a ```bash block")
    body = []
    for line in rest[open_at + 1:]:
        if line.strip() == "```":
            break
        body.append(line)
    else:
        raise SystemExit("the ```bash block after the CI marker is not closed")
    cmd = " ".join(line.strip() for line in body if line.strip())
    if not cmd:
        raise SystemExit("the ```bash block after the CI marker is empty")
    return cmd


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "README.md"
    print(readme_command(sys.stdin.read() if name == "-" else Path(name).read_text(
        encoding="utf-8")))
