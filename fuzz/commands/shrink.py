"""``shardfuzz shrink``: go on shrinking a corpus entry, keeping a smaller case that fails the same way."""

from __future__ import annotations

import argparse
import sys
import time

from shardfuzz.commands._common import executor_for, interpreters_of, read_entry

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    import attrs

    from shardfuzz.executor import PoolStartError
    from shardfuzz.executor.interpreters import InterpreterError
    from shardfuzz.findings.corpus import rewrite_entry
    from shardfuzz.findings.describe import describe
    from shardfuzz.search.shrink import case_size, shrink_case

    entry = read_entry("shrink", args.entry)
    if entry is None:
        return 2
    try:
        interpreters = interpreters_of(args)
    except InterpreterError as exc:
        print(f"shardfuzz shrink: {exc}", file=sys.stderr)
        return 2
    if entry.torches is not None and interpreters is None:
        print(
            "shardfuzz shrink: {} was saved under torch {} and loaded under torch {}: give --save-python and "
            "--load-python".format(args.entry, *entry.torches),
            file=sys.stderr,
        )
        return 2

    def still_fails(case) -> bool:
        verdict = pool.run(case)
        return verdict.is_failure and verdict.signature() == entry.signature

    def admissible(case) -> bool:  # a known bug's case must keep meeting its conditions
        return not pool.cannot_run(case) and (entry.known is None or entry.known.matches(case))

    print(
        f"shrinking {args.entry} (size {case_size(entry.case)}: {describe(entry.case)}) for up to {args.budget:g} s",
        file=sys.stderr,
    )
    try:
        with executor_for(
            interpreters, entry.replay_world_size, target=entry.target, case_timeout=args.case_timeout
        ) as pool:
            started = time.monotonic()
            if not still_fails(entry.case):
                print(
                    f"shardfuzz shrink: {args.entry} does not fail as recorded here ({entry.signature[:120]}); "
                    "`shardfuzz replay` says how it behaves now",
                    file=sys.stderr,
                )
                return 1
            if args.case_timeout is None and entry.status != "hang":
                # A simpler case that hangs (another bug) costs seconds, not the generic deadline; a
                # hang entry keeps the generic one, lest a slow candidate pass for the same hang.
                pool.case_timeout = max(10.0, 5 * (time.monotonic() - started))
            result = shrink_case(entry.case, still_fails, budget=args.budget, admissible=admissible)
    except PoolStartError as exc:
        print(f"shardfuzz shrink: {exc}", file=sys.stderr)
        return 2
    if result.moves:
        rewrite_entry(args.entry, attrs.evolve(entry, case=result.case, shrunk=result.finished))
    elif result.finished and not entry.shrunk:
        rewrite_entry(args.entry, attrs.evolve(entry, shrunk=True))
    state = (
        "finished (nothing one step simpler fails the same way)"
        if result.finished
        else "stopped by the budget: run it again to go on"
    )
    print(
        f"shardfuzz shrink: size {case_size(entry.case)} -> {case_size(result.case)} in {result.moves} moves, "
        f"{result.tried} cases tried, {result.seconds:.0f} s; {state}\n  {describe(result.case)}"
    )
    return 0
