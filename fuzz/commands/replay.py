"""``shardfuzz replay``: re-run corpus entries and say which still fail, now pass, changed or are flaky."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shardfuzz.commands._common import executor_for, interpreters_of

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    import attrs

    from shardfuzz.executor import PoolStartError, RankPool
    from shardfuzz.executor.cross import CrossVersionPool
    from shardfuzz.executor.interpreters import InterpreterError
    from shardfuzz.findings.corpus import rewrite_entry
    from shardfuzz.findings.replay import replay_entries
    from shardfuzz.search.runner import campaign_devices

    _, why_not = campaign_devices(args.device)
    if not why_not and args.on_cuda and args.device != "cuda":
        why_not = "--on-cuda moves sides to the GPUs: give --device cuda too"
    if not why_not and args.record and not args.on_cuda:
        why_not = "--record writes what the GPU did into each entry: give --on-cuda (and --device cuda) too"
    if not why_not and args.on_cuda and (args.save_python or args.load_python):
        why_not = "--on-cuda runs one torch: leave out --save-python and --load-python"
    if why_not:
        print(f"shardfuzz replay: {why_not}", file=sys.stderr)
        return 2
    entries, problems = _entries_at(args.paths)
    for problem in problems:
        print(f"shardfuzz replay: skipping {problem}", file=sys.stderr)
    if not entries:
        print("shardfuzz replay: no corpus entries to replay", file=sys.stderr)
        return 2
    # One pool per target, of the largest world its entries need; an entry that must fill its
    # process group exactly (a broadcasting load, a framework's target) gets a pool of its own size where that differs.
    sizes: dict[str, int] = {}
    exact: dict[str, set[int]] = {}
    for _, entry in entries:
        if args.max_world_size is not None and entry.replay_world_size > args.max_world_size:
            continue  # skipped, saying so: no pool grows to its size
        sizes[entry.target] = max(sizes.get(entry.target, 1), entry.replay_world_size)
        if entry.fills_its_world:
            exact.setdefault(entry.target, set()).add(entry.replay_world_size)
    try:
        interpreters = interpreters_of(args)
    except InterpreterError as exc:
        print(f"shardfuzz replay: {exc}", file=sys.stderr)
        return 2
    pools: dict[tuple[str, int], RankPool | CrossVersionPool] = {}

    def pool_for(target: str, world_size: int) -> RankPool | CrossVersionPool:
        size = world_size if world_size in exact.get(target, ()) else sizes[target]
        if (target, size) not in pools:
            pools[target, size] = executor_for(
                interpreters, size, target=target, case_timeout=args.case_timeout, device=args.device
            )
        return pools[target, size]

    def show(replay) -> None:
        if replay.cuda is not None:
            print(f"cuda {replay.cuda.outcome:15} {replay.path.name}  {replay.cuda.verdict[:150]}")
            if args.record:
                rewrite_entry(replay.path, attrs.evolve(replay.entry, cuda=replay.cuda))
            return
        mark = "skip" if replay.outcome == "skipped" else ("NOTE" if replay.unexpected else "ok  ")
        print(f"{mark} {replay.outcome:13} {replay.path.name}  {replay.entry.title[:110]}")
        if replay.skipped:
            print(f"       {replay.skipped}")
        elif replay.outcome != "still failing":
            for verdict in replay.verdicts[:3]:
                print(f"       now: {verdict.summary()[:160]}")
        if replay.note and not replay.skipped:
            print(f"       {replay.note}")

    try:
        replays = replay_entries(
            entries,
            pool_for,
            repeat=args.repeat,
            on_replay=show,
            max_world_size=args.max_world_size,
            on_cuda=_gpu_count() if args.on_cuda else 0,
        )
    except PoolStartError as exc:
        print(f"shardfuzz replay: {exc}", file=sys.stderr)
        return 2
    finally:
        for pool in pools.values():
            pool.close()
    if args.report:
        args.report.write_text(
            json.dumps(
                {"repeat": args.repeat, "problems": problems, "entries": [r.as_dict() for r in replays]}, indent=2
            )
            + "\n"
        )
    if args.on_cuda:
        return 0  # a bug that passes on CUDA is a finding about the bug, not a failed replay
    return 1 if any(r.unexpected for r in replays) else 0


def _entries_at(paths: list[Path]):
    """Entries from files and directories; unreadable files and missing paths as problems."""
    from shardfuzz.findings.corpus import CorpusError, load_corpus, load_entry

    entries, problems = [], []
    for path in paths:
        if path.is_dir():
            found, bad = load_corpus(path)
            entries += found
            problems += bad
        elif path.exists():
            try:
                entries.append((path, load_entry(path)))
            except CorpusError as exc:
                problems.append(str(exc))
        else:
            problems.append(f"{path}: no such file or directory")
    return entries, problems


def _gpu_count() -> int:
    from shardfuzz.capabilities import capabilities

    return capabilities().cuda_devices
