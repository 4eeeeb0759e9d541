"""``shardfuzz run``: fuzz save/load round-trips for a time budget, in one campaign or several workers."""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    import attrs

    from shardfuzz.search.run_config import RunConfig

    config = RunConfig.from_args(args)
    if config.database is None:
        from shardfuzz.search.database import DEFAULT_DATABASE

        config = attrs.evolve(config, database=DEFAULT_DATABASE)
    if config.workers == 1:
        from shardfuzz.search.runner import run_command

        return run_command(config)
    from shardfuzz.search.workers import run_workers

    return run_workers(config)
