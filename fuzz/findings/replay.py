"""Re-run corpus entries and say, per entry, whether it still fails the way it was recorded.

An entry is run ``repeat`` times on a pool with the entry's target. The outcome:

- ``still failing``: every run failed with the recorded signature;
- ``now passing``: every run passed (a fix landed, or the bug is gone from this torch);
- ``changed``: every run gave the same new signature (the bug moved, or a different one hides it);
- ``flaky``: the runs disagree; all their verdicts are in the report;
- ``skipped``: this machine cannot run it (a side on cuda, too few GPUs, a target whose framework is not
  installed, an entry found across two torches and a pool of one, more ranks than ``max_world_size``);
  ``skipped`` says why.

Whether an outcome is news depends on the entry's ranges (``expectation``): inside a known range, or an
untriaged entry, it should still fail; past a ``fixed-in`` end it should pass (failing again is a
regression); past a ``last-checked`` end, or below a range, either is information, never a failure.

With ``on_cuda`` (the GPU count), an entry found on CPU ranks is run with each side that fits on the
GPUs moved to CUDA (``moved_to_cuda``; an entry found on a GPU runs as recorded), then with every side
on CPU ranks of the same pool (the CPU control), and its
``Replay.cuda`` says what the GPU did (``device_check.DeviceCheck``; ``replay --on-cuda --record`` writes it
into the entry).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
from attrs import frozen

from shardfuzz.case import Case
from shardfuzz.executor import Executor
from shardfuzz.findings.corpus import Entry
from shardfuzz.findings.device_check import DeviceCheck
from shardfuzz.targets import unavailable
from shardfuzz.verdict import Verdict

__all__ = ["OUTCOMES", "Replay", "expectation", "judge", "moved_to_cuda", "replay_entries"]

OUTCOMES = ("still failing", "now passing", "changed", "flaky", "skipped")


@frozen
class Replay:
    path: Path
    entry: Entry
    verdicts: tuple[Verdict, ...]
    outcome: str
    skipped: str = ""  # why it was not run here
    cuda: DeviceCheck | None = None  # with ``on_cuda``: the replay with its sides moved to a GPU
    expected: str = "still failing"  # ``expectation``: "still failing", "now passing" or "either"
    note: str = ""  # what the outcome means for the entry's ranges ('' where there is nothing to say)

    @property
    def unexpected(self) -> bool:
        """Whether the outcome is not what the entry's ranges predict here (``replay`` then exits 1)."""
        if self.outcome in ("skipped", self.expected):
            return False
        return self.expected != "either" or self.outcome in ("changed", "flaky")

    def as_dict(self) -> dict:
        return {
            **({"cuda": attrs.asdict(self.cuda)} if self.cuda else {}),
            "path": str(self.path),
            "title": self.entry.title,
            "recorded_signature": self.entry.signature,
            "outcome": self.outcome,
            "expected": self.expected,
            **({"note": self.note} if self.note else {}),
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


def expectation(entry: Entry, torch_version: str, *, save_torch: str | None = None) -> tuple[str, str]:
    """What replaying ``entry`` under ``torch_version`` (loading, after ``save_torch`` saved) with the installed
    frameworks should give, by its known ranges, and a note on what each outcome would mean.

    ("still failing", ...): an untriaged entry, or inside a known range. ("now passing", ...): past a ``fixed-in``
    end. ("either", ...): past a ``last-checked`` end (a failure extends the range, a pass may be a fix), or
    outside a range on its lower side."""
    known = entry.known
    if known is None:
        return "still failing", ""
    past = known.past_fix(torch_version, save_torch=save_torch)
    if past:
        return "now passing", f"past its fix: {', '.join(past)}; failing the same way again is a regression"
    if known.applies_to(torch_version, save_torch=save_torch):
        beyond = known.beyond_checked(torch_version, save_torch=save_torch)
        if beyond:
            return "either", (
                f"above the last release checked: {', '.join(beyond)}; still failing extends the range, "
                f"passing may be a fix there (check it, then mark that end fixed-in)"
            )
        return "still failing", ""
    outside = known.out_of_range() or f"torch {torch_version} (known for {known.torch})"
    return "either", f"outside its known range: {outside}"


def _needs_two_torches(entry: Entry, pool: Executor) -> str:
    """Why an entry found across two torches cannot replay on ``pool`` (one torch), or ''."""
    if entry.torches is None or getattr(pool, "torches", None) is not None:
        return ""
    save, load = entry.torches
    return (
        f"found saving under torch {save} and loading under torch {load}: replay with --save-python and "
        f"--load-python (`shardfuzz torch-env VERSION` prints an environment's Python)"
    )


def moved_to_cuda(case: Case, gpus: int) -> tuple[Case, tuple[str, ...]]:
    """``case`` with each CPU side that has a GPU for every rank (NCCL runs one rank per GPU) moved to
    CUDA, and the names of the sides moved (none: neither fits)."""
    save, load = (
        attrs.evolve(side, device="cuda") if side.device == "cpu" and side.world_size <= gpus else side
        for side in (case.save, case.load)
    )
    moved = tuple(name for name, old, new in (("save", case.save, save), ("load", case.load, load)) if old != new)
    return attrs.evolve(case, save=save, load=load), moved


#: A replay's outcome as a ``DeviceCheck`` outcome.
_ON_DEVICE = {
    "still failing": "reproduces",
    "now passing": "passes",
    "changed": "fails otherwise",
    "flaky": "flaky",
    "skipped": "not run",
}


def _why_not_on_cuda(entry: Entry, gpus: int) -> str:
    if entry.torches is not None:
        return "found across two torches (a GPU replay runs one torch)"
    return (
        f"its sides are on {entry.case.save.world_size} and {entry.case.load.world_size} ranks and the machine "
        f"has {gpus} GPU(s): NCCL runs one rank per GPU"
    )


def _sides_on_cuda(case: Case) -> tuple[str, ...]:
    return tuple(name for name, side in (("save", case.save), ("load", case.load)) if side.device == "cuda")


def _all_on_cpu(case: Case) -> Case:
    """The CPU control of a replay on CUDA: ``case`` with every side on CPU ranks."""
    return attrs.evolve(case, save=attrs.evolve(case.save, device="cpu"), load=attrs.evolve(case.load, device="cpu"))


def _gpu_name(gpus: int) -> str:
    import torch

    return f"{torch.cuda.get_device_name(0)} x{gpus}" if torch.cuda.is_available() else ""


def replay_entries(
    entries: list[tuple[Path, Entry]],
    pool_for: Callable[[str, int], Executor],
    *,
    repeat: int = 1,
    on_replay: Callable[[Replay], None] | None = None,
    max_world_size: int | None = None,
    on_cuda: int = 0,
) -> list[Replay]:
    """Replay every entry ``repeat`` times; ``pool_for(target, world_size)`` gives a running pool.

    ``max_world_size``: entries that need more ranks are skipped (saying so) rather than started.
    ``on_cuda``: the GPU count; each entry is run with its sides moved to them (an entry found on a GPU:
    as recorded), then with every side on CPU ranks of the same pool."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if on_cuda < 0:
        raise ValueError(f"on_cuda is a GPU count, got {on_cuda}")
    results = []
    for path, entry in entries:
        case = moved_to_cuda(entry.case, on_cuda)[0] if on_cuda else entry.case
        on_gpu = _sides_on_cuda(case)
        why_not_here = unavailable(entry.target)  # a framework's entry where that framework is not installed
        if not why_not_here and on_cuda and (not on_gpu or entry.torches is not None):
            why_not_here = _why_not_on_cuda(entry, on_cuda)
        if not why_not_here and max_world_size is not None and entry.replay_world_size > max_world_size:
            why_not_here = f"needs {entry.replay_world_size} ranks; this replay runs at most {max_world_size}"
        if not why_not_here:
            pool = pool_for(entry.target, entry.replay_world_size)
            why_not_here = pool.cannot_run(case) or _needs_two_torches(entry, pool)
        if why_not_here:
            replay = Replay(path, entry, (), "skipped", why_not_here)
        else:
            verdicts = tuple(pool.run(case) for _ in range(repeat))
            expected, note = _expected_on(entry, pool)
            replay = Replay(path, entry, verdicts, judge(entry, verdicts), expected=expected, note=note)
        if on_cuda:
            replay = attrs.evolve(replay, cuda=_device_check(replay, on_gpu, on_cuda, pool_for, repeat))
        results.append(replay)
        if on_replay is not None:
            on_replay(replay)
    return results


def _expected_on(entry: Entry, pool: Executor) -> tuple[str, str]:
    import torch

    save_torch, load_torch = getattr(pool, "torches", None) or (None, str(torch.__version__))
    return expectation(entry, load_torch, save_torch=save_torch)


def _device_check(replay: Replay, on_gpu: tuple[str, ...], gpus: int, pool_for, repeat: int) -> DeviceCheck:
    """``replay`` (of the entry with ``on_gpu`` sides on CUDA) as a ``DeviceCheck``, with the CPU control
    (every side on CPU) run on the same pool."""
    import torch

    entry = replay.entry
    on_cpu = ""
    if replay.outcome != "skipped":
        pool = pool_for(entry.target, entry.replay_world_size)
        control = _all_on_cpu(entry.case)
        on_cpu = _ON_DEVICE[judge(entry, tuple(pool.run(control) for _ in range(repeat)))]
    changed = {_signature(v) for v in replay.verdicts} if replay.outcome == "changed" else set()
    return DeviceCheck(
        outcome=_ON_DEVICE[replay.outcome],
        torch=torch.__version__,
        gpu=_gpu_name(gpus),
        moved=on_gpu if replay.outcome != "skipped" else (),
        on_cpu=on_cpu,
        detail=replay.skipped or "".join(changed)[:300],
        date=datetime.date.today().isoformat(),
    )
