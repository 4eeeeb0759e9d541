"""``shardfuzz explain``: run a corpus entry's neighbours and keep what they measured in the entry."""

from __future__ import annotations

import argparse
import sys
import time

from shardfuzz.commands._common import executor_for, interpreters_of, read_entry

__all__ = ["main"]

#: Ranks of the pool an entry is explained on, at least: neighbours move each side to 1, 2 and 4 ranks.
EXPLAIN_WORLD_SIZE = 4


def main(args: argparse.Namespace) -> int:
    import torch

    from shardfuzz.executor import PoolStartError
    from shardfuzz.executor.interpreters import InterpreterError
    from shardfuzz.findings.corpus import rewrite_entry
    from shardfuzz.findings.describe import describe
    from shardfuzz.search.explain import explain_case, with_explanation, with_reach_measured

    try:
        interpreters = interpreters_of(args)
    except InterpreterError as exc:
        print(f"shardfuzz explain: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in args.entries:
        entry = read_entry("explain", path)
        if entry is None:
            status = 2
            continue
        if entry.torches is not None and interpreters is None:
            print(
                "shardfuzz explain: {} was saved under torch {} and loaded under torch {}: give --save-python and "
                "--load-python".format(path, *entry.torches),
                file=sys.stderr,
            )
            status = 2
            continue
        # A hang's signature names where every stuck rank waits: where the save side hangs, the ranks outside it
        # wait too (in the barrier before the load), so on a larger pool than it was found on it reads otherwise.
        hangs_saving = entry.status == "hang" and entry.cause is not None and _hangs_saving(entry.cause.phase)
        own_size = entry.fills_its_world or hangs_saving
        size = entry.replay_world_size if own_size else max(entry.replay_world_size, EXPLAIN_WORLD_SIZE)
        print(f"explaining {path.name}: {describe(entry.case)} (up to {args.budget:g} s)", file=sys.stderr)
        started = time.monotonic()
        try:
            with executor_for(interpreters, size, target=entry.target, case_timeout=args.case_timeout) as pool:
                itself = _not_reproduced(entry, pool)
                if itself:  # its neighbours would measure another failure, or none (a bug fixed in what is installed)
                    print(f"shardfuzz explain: {path.name} {itself} here: nothing to explain, nothing recorded")
                    status = max(status, 1)
                    continue
                if args.reach and entry.explanation is not None and entry.explanation.complete:
                    explanation = with_reach_measured(
                        entry.explanation, entry.case, entry.signature, pool.run, cannot_run=pool.cannot_run
                    )
                else:
                    explanation = explain_case(
                        entry.case,
                        entry.signature,
                        pool.run,
                        cannot_run=pool.cannot_run,
                        deadline=started + args.budget,
                        torch_version=str(torch.__version__),
                        resume=_resumable(entry, str(torch.__version__), extend=args.extend),
                    )
        except PoolStartError as exc:
            print(f"shardfuzz explain: {exc}", file=sys.stderr)
            return 2
        for row in explanation.neighbours:
            detail = f"  ({row.detail[:100]})" if row.detail else ""
            print(f"  {row.outcome:14} {row.dimension:34} {row.change}{detail}")
        for row in explanation.edge_trials:
            print(f"  {row.outcome:14} {'+ ' + row.dimension:34} {row.change}")
        print(f"{path.name}: {explanation.summary()}")
        print(f"  {len(explanation.neighbours)} neighbours in {time.monotonic() - started:.1f} s", file=sys.stderr)
        if args.record:
            rewrite_entry(path, with_explanation(entry, explanation))
    return status


#: The phases of a case's save side (``roundtrip``): a hang there leaves the ranks outside it in the barrier.
_SAVE_PHASES = frozenset({"build-save", "train", "gather-saved", "save", "continue-saved", "api-parity", "finish-save"})


def _hangs_saving(phases: str) -> bool:
    """Whether a hang's stuck phases (``Cause.phase``: "gather-saved,save") include one of the save side."""
    return bool(_SAVE_PHASES.intersection(phases.split(",")))


def _not_reproduced(entry, pool) -> str:
    """What the entry's own case does on ``pool`` where that is not its failure ('passes', 'fails otherwise:
    ...'); '' where it fails the same way."""
    why_not = pool.cannot_run(entry.case)
    if why_not:
        return f"cannot run ({why_not[:200]})"
    verdict = pool.run(entry.case)
    if not verdict.is_failure:
        return "passes" if verdict.status != "unsupported" else f"is not supported ({verdict.summary()[:200]})"
    if verdict.signature() != entry.signature:
        return f"fails otherwise ({verdict.signature()[:200]})"
    return ""


def _resumable(entry, torch_version: str, *, extend: bool = False):
    """The entry's explanation if it was cut short under this torch (or, to ``extend`` it, complete under this
    torch): its neighbours need not run again."""
    explanation = entry.explanation
    if explanation is None or (explanation.complete and not extend) or explanation.torch != torch_version:
        return None
    print(f"  resuming: {len(explanation.neighbours)} neighbours measured before", file=sys.stderr)
    return explanation
