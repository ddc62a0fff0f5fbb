#!/usr/bin/env python3
"""Checks that every lock declared in Sources says where it sits in the lock order.

A lock is a stored `Mutex` or `Condition` (a `let` or `var` made with one, or typed as one). Its
doc comment (the `///` lines right above it) must contain "Lock order:", as ARCHITECTURE's
concurrency section describes. Prints each declaration without one and exits 1 if there is any.
"""
import pathlib
import re
import sys

DECLARATION = re.compile(r"^\s*(?:(?:public|private|fileprivate|internal|static|nonisolated)\s+)*(?:let|var)\s+\w+\s*"
                         r"(?::\s*(?:Mutex|Condition)\s*<|=\s*(?:Mutex|Condition)\s*[<(])")


def unexplained(root: pathlib.Path):
    for path in sorted(root.rglob("*.swift")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not DECLARATION.match(line):
                continue
            comment, above = [], number - 1
            while above >= 0 and lines[above].strip().startswith("///"):
                comment.append(lines[above])
                above -= 1
            if not any("Lock order:" in text for text in comment):
                yield f"{path}:{number + 1}: {line.strip()}"


def main() -> int:
    root = pathlib.Path(__file__).resolve().parents[2] / "Sources"
    missing = list(unexplained(root))
    for entry in missing:
        print(f"lock without its place in the lock order: {entry}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
