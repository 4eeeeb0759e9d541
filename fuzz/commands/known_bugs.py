"""``shardfuzz known-bugs``: the corpus's known bugs as a markdown table."""

from __future__ import annotations

import argparse
import sys

from shardfuzz.commands._common import emit

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    from shardfuzz.findings.corpus import load_corpus
    from shardfuzz.findings.known_table import known_bug_table

    entries, problems = load_corpus(args.corpus)
    for problem in problems:
        print(f"shardfuzz known-bugs: skipping {problem}", file=sys.stderr)
    emit(known_bug_table(entries), args.output)
    return 0
