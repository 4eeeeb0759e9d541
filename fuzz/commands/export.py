"""``shardfuzz export``: a corpus entry as a standalone torch-only reproducer script."""

from __future__ import annotations

import argparse
import sys

from shardfuzz.commands._common import emit, read_entry

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    from shardfuzz.findings.export import export_script

    entry = read_entry("export", args.entry)
    if entry is None:
        return 2
    try:
        script = export_script(entry, filename=args.output.name if args.output else "repro.py")
    except ValueError as exc:
        print(f"shardfuzz export: {args.entry}: {exc}", file=sys.stderr)
        return 2
    emit(script, args.output)
    if args.output is not None:
        print(
            f"wrote {args.output}: run it with `python {args.output}` or "
            f"`torchrun --nproc-per-node {entry.case.world_size} {args.output}`",
            file=sys.stderr,
        )
    return 0
