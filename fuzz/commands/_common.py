"""What several commands share: a corpus entry read or refused, output to a file or stdout, pools in one torch or two."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["emit", "executor_for", "interpreters_of", "read_entry"]


def read_entry(command: str, path: Path):
    """The corpus entry at ``path``, or None after saying what is wrong with the file."""
    from shardfuzz.findings.corpus import CorpusError, load_entry

    try:
        return load_entry(path)
    except CorpusError as exc:
        print(f"shardfuzz {command}: {exc}", file=sys.stderr)
        return None


def emit(text: str, output: Path | None) -> None:
    """``text`` to ``output``, or to stdout when there is none."""
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


def interpreters_of(args: argparse.Namespace):
    """(save, load) ``Interpreter``s of ``--save-python``/``--load-python``, or None when neither is given."""
    from shardfuzz.executor.interpreters import probe

    if args.save_python is None and args.load_python is None:
        return None
    return tuple(probe(python or sys.executable) for python in (args.save_python, args.load_python))


def executor_for(interpreters, world_size: int, **options):
    """A ``RankPool`` (one torch: this one, or ``--save-python`` and ``--load-python`` alike; ``PerSidePools`` for a
    target that needs a pool a side, ``executor.pool_for``) or a ``CrossVersionPool`` (two), with ``RankPool``'s
    ``options``."""
    from shardfuzz.executor import pool_for
    from shardfuzz.executor.cross import CrossVersionPool

    if interpreters is None or interpreters[0] == interpreters[1]:
        return pool_for(world_size, interpreter=interpreters[0] if interpreters else None, **options)
    return CrossVersionPool(world_size, save=interpreters[0], load=interpreters[1], **options)
