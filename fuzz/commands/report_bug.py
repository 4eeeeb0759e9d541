"""``shardfuzz report-bug``: a corpus entry as the text of an upstream issue (markdown)."""

from __future__ import annotations

import argparse
import sys

from shardfuzz.commands._common import emit, read_entry

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    from shardfuzz.findings.export import export_script
    from shardfuzz.findings.upstream import issue_text

    entry = read_entry("report-bug", args.entry)
    if entry is None:
        return 2
    try:
        text = issue_text(entry, script=export_script(entry))
    except ValueError as exc:
        print(f"shardfuzz report-bug: {args.entry}: {exc}", file=sys.stderr)
        return 2
    emit(text, args.output)
    if args.output is not None:
        print(
            f"wrote {args.output}: check it reproduces on your machine (`shardfuzz export`), then file it",
            file=sys.stderr,
        )
    return 0
