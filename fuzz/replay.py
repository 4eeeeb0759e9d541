"""Re-run corpus entries and say, per entry, whether it still fails the way it was recorded.

An entry is run ``repeat`` times on a pool with the entry's target. The outcome:

- ``still failing``: every run failed with the recorded signature;
- ``now passing``: every run passed (a fix landed, or the bug is gone from this torch);
- ``changed``: every run gave the same new signature (the bug moved, or a different one hides it);
- ``flaky``: the runs disagree; all their verdicts are in the report;
- ``skipped``: this machine cannot run it (a side on cuda, too few GPUs, a target whose framework is not
  installed, an entry found across two torches and a pool of one); ``skipped`` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from attrs import frozen

from shardfuzz.corpus import Entry
from shardfuzz.executor import Executor
from shardfuzz.targets import unavailable
from shardfuzz.verdict import Verdict

__all__ = ["OUTCOMES", "Replay", "judge", "replay_entries"]

OUTCOMES = ("still failing", "now passing", "changed", "flaky", "skipped")


@frozen
class Replay:
    path: Path
    entry: Entry
    verdicts: tuple[Verdict, ...]
    outcome: str
    skipped: str = ""  # why it was not run here

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "title": self.entry.title,
            "recorded_signature": self.entry.signature,
            "outcome": self.outcome,
            "known": self.entry.known is not None,
            **({"skipped": self.skipped} if self.skipped else {}),
            "runs": [
                {
                    "status": v.status,
                    "signature": _signature(v),
                    "summary": v.summary()[:500],
                    "seconds": round(v.seconds, 3),
                }
                for v in self.verdicts
            ],
        }


def _signature(verdict: Verdict) -> str:
    return verdict.signature() if verdict.is_failure else "pass"


def judge(entry: Entry, verdicts: Iterable[Verdict]) -> str:
    """The outcome of replaying ``entry`` with these verdicts."""
    signatures = {_signature(v) for v in verdicts}
    if len(signatures) > 1:
        return "flaky"
    (signature,) = signatures
    if signature == entry.signature:
        return "still failing"
    return "now passing" if signature == "pass" else "changed"


def _needs_two_torches(entry: Entry, pool: Executor) -> str:
    """Why an entry found across two torches cannot replay on ``pool`` (one torch), or ''."""
    if entry.torches is None or getattr(pool, "torches", None) is not None:
        return ""
    save, load = entry.torches
    return (
        f"found saving under torch {save} and loading under torch {load}: replay with --save-python and "
        f"--load-python (`shardfuzz torch-env VERSION` prints an environment's Python)"
    )


def replay_entries(
    entries: list[tuple[Path, Entry]],
    pool_for: Callable[[str, int], Executor],
    *,
    repeat: int = 1,
    on_replay: Callable[[Replay], None] | None = None,
) -> list[Replay]:
    """Replay every entry ``repeat`` times; ``pool_for(target, world_size)`` gives a running pool."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    results = []
    for path, entry in entries:
        why_not_here = unavailable(entry.target)  # a framework's entry where that framework is not installed
        if not why_not_here:
            pool = pool_for(entry.target, entry.replay_world_size)
            why_not_here = pool.cannot_run(entry.case) or _needs_two_torches(entry, pool)
        if why_not_here:
            replay = Replay(path, entry, (), "skipped", why_not_here)
        else:
            verdicts = tuple(pool.run(entry.case) for _ in range(repeat))
            replay = Replay(path, entry, verdicts, judge(entry, verdicts))
        results.append(replay)
        if on_replay is not None:
            on_replay(replay)
    return results
