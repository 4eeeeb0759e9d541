"""``shardfuzz replay``: re-run corpus entries and say which still fail, now pass, changed or are flaky."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shardfuzz.commands._common import executor_for, interpreters_of

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    from shardfuzz.executor import PoolStartError
    from shardfuzz.executor.interpreters import InterpreterError
    from shardfuzz.findings.replay import replay_entries

    why_not = _refused(args)
    if why_not:
        print(f"shardfuzz replay: {why_not}", file=sys.stderr)
        return 2
    entries, problems = _entries_at(args.paths)
    for problem in problems:
        print(f"shardfuzz replay: skipping {problem}", file=sys.stderr)
    if not entries:
        print("shardfuzz replay: no corpus entries to replay", file=sys.stderr)
        return 2
    try:
        pools = _Pools(args, entries, interpreters_of(args))
    except InterpreterError as exc:
        print(f"shardfuzz replay: {exc}", file=sys.stderr)
        return 2
    try:
        replays = replay_entries(
            entries,
            pools.pool_for,
            repeat=args.repeat,
            on_replay=lambda replay: _show(replay, record=args.record),
            max_world_size=args.max_world_size,
            on_cuda=_gpu_count() if args.on_cuda else 0,
        )
    except PoolStartError as exc:
        print(f"shardfuzz replay: {exc}", file=sys.stderr)
        return 2
    finally:
        pools.close()
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


def _refused(args: argparse.Namespace) -> str:
    """Why these options cannot be used together (or on this machine), or ''."""
    from shardfuzz.search.run_setup import campaign_devices

    _, why_not = campaign_devices(args.device)
    if not why_not and args.on_cuda and args.device != "cuda":
        why_not = "--on-cuda moves sides to the GPUs: give --device cuda too"
    if not why_not and args.record and not args.on_cuda:
        why_not = "--record writes what the GPU did into each entry: give --on-cuda (and --device cuda) too"
    if not why_not and args.on_cuda and (args.save_python or args.load_python):
        why_not = "--on-cuda runs one torch: leave out --save-python and --load-python"
    return why_not


class _Pools:
    """One pool per target, of the largest world its entries need; an entry that must fill its process group
    exactly (a broadcasting load, a framework's target) gets a pool of its own size where that differs."""

    def __init__(self, args: argparse.Namespace, entries, interpreters):
        self.args, self.interpreters = args, interpreters
        self.sizes: dict[str, int] = {}
        self.exact: dict[str, set[int]] = {}
        self.pools: dict[tuple[str, int], Any] = {}
        for _, entry in entries:
            if args.max_world_size is not None and entry.replay_world_size > args.max_world_size:
                continue  # skipped, saying so: no pool grows to its size
            self.sizes[entry.target] = max(self.sizes.get(entry.target, 1), entry.replay_world_size)
            if entry.fills_its_world:
                self.exact.setdefault(entry.target, set()).add(entry.replay_world_size)

    def pool_for(self, target: str, world_size: int):
        size = world_size if world_size in self.exact.get(target, ()) else self.sizes[target]
        if (target, size) not in self.pools:
            self.pools[target, size] = executor_for(
                self.interpreters,
                size,
                target=target,
                case_timeout=self.args.case_timeout,
                device=self.args.device,
            )
        return self.pools[target, size]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def _show(replay, *, record: bool) -> None:
    """One entry's line (and what it means for the entry's ranges); with ``record``, a GPU replay into its entry."""
    import attrs

    from shardfuzz.findings.corpus import rewrite_entry

    if replay.cuda is not None:
        print(f"cuda {replay.cuda.outcome:15} {replay.path.name}  {replay.cuda.verdict[:150]}")
        if record:
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
