"""``shardfuzz fleet``: ``shardfuzz run``'s campaigns across a Ray cluster (``shardfuzz.fleet``)."""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    import attrs

    from shardfuzz.fleet import FleetOptions
    from shardfuzz.search.database import DEFAULT_DATABASE
    from shardfuzz.search.run_config import RunConfig

    config = RunConfig.from_args(args)
    if config.database is None:
        config = attrs.evolve(config, database=DEFAULT_DATABASE)
    from shardfuzz.fleet.driver import run_fleet

    return run_fleet(config, FleetOptions.from_args(args))
