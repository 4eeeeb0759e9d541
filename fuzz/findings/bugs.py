"""Bugs, not entries: the corpus's entries grouped by root cause.

Shrinking finds one bug many times: through another optimizer's state, another storage path, the save
side and the load side. Each such finding is an entry (its own minimal case and signature); a bug is the
root cause they share, named by the entries' ``known.bug``. ``root_cause`` says where a failure comes
from, read off the entry itself:

- a loud error: the innermost frame in torch or a framework that raised, and the exception type;
- a silent corruption: the oracle and the kind of state it found wrong;
- a hang or a crash: where the stuck ranks wait (their innermost torch frame), or the signal.

Entries of one bug may differ in root cause (the same bug raises in the save of one and the load of
another); entries of two bugs may share one (two causes reach the same ``KeyError``): ``apart`` lists the
pairs of bugs a single failure could match both of (same signature, ``known.when`` conditions that do not
exclude each other). Where triggers overlap so, a failure that meets both is reported as new
(``KnownBugs.lookup``), never counted under the wrong bug.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from attrs import frozen

from shardfuzz.case.conditions import compatible, generalize
from shardfuzz.findings.corpus import Entry

__all__ = ["Bug", "apart", "bugs_of", "root_cause"]

# A traceback's frames ("line 12, in f") and faulthandler's ("line 12 in f").
_FRAME = re.compile(r'File "([^"]+)", line \d+,? in (\w+)')
# Where a stuck rank waits is the call that issued the collective, not the collective's own wrappers.
_WRAPPERS = (
    "torch/distributed/distributed_c10d.py",
    "torch/distributed/c10d_logger.py",
    "torch/utils/_contextlib.py",
    "torch/_ops.py",
)
_PACKAGES = re.compile(
    r"site-packages/((?:torch|accelerate|lightning|lightning_fabric|pytorch_lightning|torchtitan)/.*)"
)
_OPTIMIZER_KEY = re.compile(r"^optim\.state\.[^.]+\..*\.(\w+)$")


@frozen
class Bug:
    """One root cause: its name (``known.bug``, or the entry's own file stem where none is given), its kind
    (``triage.KINDS``) and its entries, as ``(path, entry)``."""

    name: str
    kind: str
    entries: tuple[tuple[Path, Entry], ...]

    @property
    def root_causes(self) -> tuple[str, ...]:
        return tuple(sorted({root_cause(entry) for _, entry in self.entries}))


def _innermost_frame(diagnostics: str, most_recent_first: bool) -> str:
    frames = [(m.group(1), m.group(2)) for m in _FRAME.finditer(diagnostics)]
    ours = [
        (m.group(1), function)
        for path, function in frames
        if (m := _PACKAGES.search(path)) and not m.group(1).startswith(_WRAPPERS)
    ]
    if not ours:
        return ""
    path, function = ours[0] if most_recent_first else ours[-1]
    return f"{path}:{function}"


def root_cause(entry: Entry) -> str:
    """Where ``entry``'s failure comes from (see the module docstring), as one line."""
    cause = entry.cause
    if cause is None:
        return entry.signature
    if cause.kind == "oracle":
        match = _OPTIMIZER_KEY.match(cause.key)
        state = f"optimizer {match.group(1)}" if match else ("optimizer" if cause.key.startswith("optim") else "model")
        return f"{cause.name} on {state} state"
    if cause.kind == "exception":
        # The raising rank's traceback (most recent call last); other ranks' stacks may follow, or stand alone
        # where the raising rank left no traceback: those say where the others waited, not what raised.
        traceback = entry.diagnostics.partition("Traceback (most recent call last)")[2].split("--- rank", 1)[0]
        frame = _innermost_frame(traceback, most_recent_first=False)
        return f"{cause.name} at {frame or f'the {cause.phase} phase'}"
    # A hang's or crash's diagnostics are faulthandler stacks: most recent call first.
    frame = _innermost_frame(entry.diagnostics, most_recent_first=True)
    what = "hang" if cause.kind == "hang" else f"{cause.kind} ({cause.name})"  # a crash names its signal
    return f"{what} in {frame or 'no torch frame recorded'}"


def bugs_of(entries: Iterable[tuple[Path, Entry]]) -> list[Bug]:
    """The bugs of these entries (those with a ``known`` block; each is one bug's), largest first, then by name."""
    groups: dict[str, list[tuple[Path, Entry]]] = {}
    for path, entry in entries:
        if entry.known is not None:
            groups.setdefault(entry.known.bug or path.stem, []).append((path, entry))
    bugs = [
        Bug(name, _kind(name, members), tuple(sorted(members, key=lambda item: item[0].name)))
        for name, members in groups.items()
    ]
    return sorted(bugs, key=lambda bug: (-len(bug.entries), bug.name))


def _kind(name: str, members: list[tuple[Path, Entry]]) -> str:
    kinds = {entry.known.kind for _, entry in members if entry.known is not None}
    if len(kinds) != 1:
        raise ValueError(f"bug {name!r}: its entries disagree on its kind ({', '.join(sorted(kinds))})")
    return kinds.pop()


def apart(entries: Iterable[tuple[Path, Entry]]) -> list[str]:
    """Pairs of bugs that one failure could match both of (entries with the same signature, target and torches, and
    conditions that do not contradict each other: each bug's as ``KnownBugs.conditions`` generalizes its
    entries'), as messages; [] when every failure can belong to one bug only."""
    groups: dict[tuple[str, str, str, str], list[tuple[Path, Entry]]] = {}
    for path, entry in entries:  # a bug across two torches never meets a bug of one in the same run
        if entry.known is not None:
            key = (entry.signature, entry.target, entry.known.save_torch, entry.known.bug or path.stem)
            groups.setdefault(key, []).append((path, entry))
    conditions = {key: generalize([entry.when for _, entry in members]) for key, members in groups.items()}
    keys = sorted(groups)
    clashes = []
    for i, key in enumerate(keys):
        for other in keys[i + 1 :]:
            if key[:3] == other[:3] and compatible(conditions[key], conditions[other]):
                names = " and ".join(
                    f"{', '.join(path.stem for path, _ in groups[each])} ({each[3]})" for each in (key, other)
                )
                clashes.append(f"{names}: same signature, conditions that do not exclude each other")
    return clashes
