"""Shrunk failures as JSON files: save atomically, deduplicate by bug, load, match known bugs.

One entry is one file, ``<hash>.json``, holding the Case, the verdict's signature
and summary, where it was seen, and, once triaged, a ``known`` block naming the
torch bug and the version range where it reproduces. Loading never unpickles or
executes anything: it is JSON through the same cattrs converter that checks every
field.

A finding joins an existing entry only when it is the same bug (``Entry.same_bug``):
the same canonical signature, the same target, and, for a known entry, a case that
meets its ``when`` conditions on a torch inside its range; for an untriaged entry,
the same torch. Anything else is a new entry in a file of its own, and a known
entry's file is never rewritten by a save.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import platform
import tempfile
from pathlib import Path

import attrs
from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case import Case, describe_structure_error, dimensions, dumps, from_dict, make_converter
from shardfuzz.case._validators import ints, strings
from shardfuzz.case.conditions import generalize, meets
from shardfuzz.findings.device_check import DeviceCheck
from shardfuzz.findings.explanation import Explanation
from shardfuzz.findings.known import Known
from shardfuzz.targets.registry import DEFAULT_TARGET
from shardfuzz.verdict import STUCK_RANK_STACKS, TRIAGE_CLASSES, Verdict, canonical_signature

__all__ = [
    "Cause",
    "CorpusError",
    "Entry",
    "KnownBugs",
    "entry_for",
    "entry_from_text",
    "entry_text",
    "known_bugs",
    "load_corpus",
    "load_entry",
    "rewrite_entry",
    "save_entry",
]

ENTRY_SCHEMA_VERSION = 1
#: ``Entry.alone``'s outcome of a torch under which the case alone fails as it did across two torches.
SAME_FAILURE = "fails the same way"


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and what is wrong."""


@frozen
class Cause:
    """What fired: an oracle (``kind="oracle"``, its name, the key) or an exception (its type, the phase)."""

    kind: str = field(validator=in_(("oracle", "exception", "crash", "hang")))
    name: str
    message: str = ""
    ranks: tuple[int, ...] = field(default=(), converter=ints)
    key: str = ""
    phase: str = ""


@frozen
class Entry:
    """One shrunk failure. ``status`` is the verdict's; ``triage`` is its class as people read it."""

    title: str
    # Brought to the current canonical form on load (``verdict.canonical_signature``).
    signature: str = field(converter=canonical_signature)
    status: str = field(validator=in_(tuple(s for s in TRIAGE_CLASSES if s != "unsupported")))
    case: Case = field(validator=instance_of(Case))
    cause: Cause | None = None
    summary: str = ""
    diagnostics: str = ""  # crash/hang: the ranks' last output and Python stacks
    flaky: bool = False
    other_outcome: str = ""  # flaky: what the confirming re-run gave instead
    # False: the campaign's shrink was cut short (budget, stop); ``shardfuzz shrink`` goes on from this case.
    shrunk: bool = True
    target: str = DEFAULT_TARGET
    # Ranks in the world it ran in (the pool's size; 0: the case's own). Ranks on
    # neither side still belong to the world, and some bugs need them (a collective
    # on the default group that they never join).
    world_size: int = 0
    versions: dict[str, str] = field(factory=dict)
    found: str = ""
    hits: int = 1
    known: Known | None = None
    schema_version: int = ENTRY_SCHEMA_VERSION
    # Found across two torches: the same case run whole under each torch alone, by torch version:
    # "pass", SAME_FAILURE, or "fails otherwise: <what>". Failing the same way under neither makes it a
    # bug of the crossing itself; the same way under one, that torch's own.
    alone: dict[str, str] = field(factory=dict)
    # The entry replayed on a GPU (None: never checked there).
    cuda: DeviceCheck | None = None
    # What its neighbours measured (``search.explain``; None: not explained yet).
    explanation: Explanation | None = None
    # Phases the campaign could not finish for it (``campaign_result.UNFINISHED``: confirmation, explanation; a cut
    # shrink is ``shrunk`` False), each with the command that finishes it (``unfinished_commands``).
    unfinished: tuple[str, ...] = field(default=(), converter=strings)
    # Its target's sides span every rank of the pool (``TargetSupport.whole_pool``: a framework's, on the
    # default group), recorded when it was saved so that reading an entry never imports its target.
    whole_pool: bool = False

    @property
    def across_only(self) -> bool:
        """Whether it is a bug of the crossing: no torch alone fails the same way on the same case."""
        return bool(self.alone) and SAME_FAILURE not in self.alone.values()

    @property
    def triage(self) -> str:
        return TRIAGE_CLASSES[self.status]

    @property
    def when(self) -> dict[str, str]:
        """The conditions a failure must meet to be this entry's bug (``known.when``); {} where not triaged."""
        return self.known.when if self.known is not None else {}

    @property
    def costs_a_restart(self) -> bool:
        """Whether each hit of this bug leaves ranks to restart (seconds each): a hang, a crash, or an
        error that some ranks never reported (their stacks are in the record)."""
        return self.status in ("hang", "crash") or (self.status == "error" and STUCK_RANK_STACKS in self.diagnostics)

    def known_on(self, torch_version: str, *, save_torch: str | None = None) -> bool:
        """Whether this entry is a known bug on ``torch_version`` (loading, after ``save_torch`` saved)."""
        return self.known is not None and self.known.applies_to(torch_version, save_torch=save_torch)

    @property
    def torches(self) -> tuple[str, str] | None:
        """(save torch, load torch) of a case found across two torches; None for one torch."""
        if "save_torch" in self.versions:
            return self.versions["save_torch"], self.versions["load_torch"]
        return None

    @property
    def replay_world_size(self) -> int:
        """Ranks to replay it on: the world it was found in, at least the case's own (exactly the
        case's own where it must fill its process group, as a broadcasting load must)."""
        from shardfuzz.unsupported import exact_world_size

        return exact_world_size(self.case) or max(self.case.world_size, self.world_size)

    @property
    def fills_its_world(self) -> bool:
        """Whether it must run in a process group of exactly ``replay_world_size`` ranks: a broadcasting
        load, or a target whose sides span the whole pool (a framework's, on the default group)."""
        from shardfuzz.unsupported import exact_world_size

        return bool(exact_world_size(self.case)) or self.whole_pool

    def same_bug(self, other: Entry) -> bool:
        """Whether ``other`` (a new finding) is this entry's bug, so that saving it may merge into this file."""
        if (other.signature, other.target, other.torches is None) != (
            self.signature,
            self.target,
            self.torches is None,
        ):
            return False
        save_torch, torch_version = other.torches or (None, other.versions.get("torch", ""))
        if self.known is not None:
            return (
                self.known.matches(other.case)
                and bool(torch_version)
                and self.known.applies_to(torch_version, save_torch=save_torch)
            )
        return (self.torches, self.versions.get("torch")) == (other.torches, other.versions.get("torch"))

    def filename_candidates(self):
        """File names for a new entry: its identity's hash, then numbered variants for the rare
        other bug that already holds that name (same signature, other target or conditions)."""
        identity = self.signature if self.target == DEFAULT_TARGET else f"{self.signature}\0target={self.target}"
        yield _hash_name(identity)
        for n in itertools.count(2):
            yield _hash_name(f"{identity}\0#{n}")

    @property
    def filename(self) -> str:
        return next(self.filename_candidates())


def _hash_name(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16] + ".json"


_converter = make_converter()  # the Case data model's converter; an entry's own fields are plain
_converter.register_structure_hook(Case, lambda data, _: from_dict(data))  # from_dict checks the schema version


def versions(torches: tuple[str, str] | None = None) -> dict[str, str]:
    """This process's versions; ``torches``: (save, load) of a run across two torches."""
    import hypothesis
    import torch

    found = {"torch": str(torch.__version__), "python": platform.python_version(), "hypothesis": hypothesis.__version__}
    if torches is not None:
        found.update(save_torch=torches[0], load_torch=torches[1])
    return found


def entry_for(
    case: Case,
    verdict: Verdict,
    *,
    target: str = DEFAULT_TARGET,
    other: Verdict | None = None,
    world_size: int = 0,
    shrunk: bool = True,
    torches: tuple[str, str] | None = None,
    alone: dict[str, Verdict] | None = None,
    frameworks: dict[str, str] | None = None,
    whole_pool: bool = False,
    unfinished: tuple[str, ...] = (),
) -> Entry:
    """The corpus entry for a failure; ``other`` is a confirming re-run that disagreed (flaky);
    ``torches``: (save, load) torch versions of a run across two; ``alone``: the case's verdict
    under each of them alone (``CrossVersionPool.alone``); ``frameworks``: the installed versions of the
    framework the target drives (``targets.framework_of``); ``whole_pool``: its target's sides span the pool."""
    summary = verdict.summary()
    flaky = ", flaky" if other is not None else ""
    outcomes = {version: _alone_outcome(v, verdict) for version, v in (alone or {}).items()}
    crossing = ""
    if torches is not None:
        own = [version for version, outcome in outcomes.items() if outcome == SAME_FAILURE]
        crossing = "torch {} -> {}{}, ".format(*torches, f" (fails alone under {' and '.join(own)})" if own else "")
    title = f"[{verdict.triage}{flaky}] {crossing}{summary.split(': ', 1)[-1]}"[:160]
    return Entry(
        title=title,
        signature=verdict.signature(),
        status=verdict.status,
        case=case,
        cause=Cause(**verdict.cause()),
        summary=summary[:2000],
        diagnostics=(verdict.diagnostics or _root_traceback(verdict))[-20_000:],
        flaky=other is not None,
        other_outcome=other.summary()[:2000] if other is not None else "",
        shrunk=shrunk,
        target=target,
        world_size=world_size,
        versions={**versions(torches), **(frameworks or {})},
        found=datetime.date.today().isoformat(),
        alone=outcomes,
        whole_pool=whole_pool,
        unfinished=unfinished,
    )


def _alone_outcome(alone: Verdict, across: Verdict) -> str:
    """What the case did under one torch alone, next to what it did across two (``Entry.alone``)."""
    if alone.ok:
        return "pass"
    if alone.signature() == across.signature():
        return SAME_FAILURE
    return f"fails otherwise: {alone.summary()[:500]}"


def _root_traceback(verdict: Verdict) -> str:
    """A loud error's traceback on its root rank (the lowest that raised): where torch raised it."""
    if not verdict.errors:
        return ""
    root = min(verdict.errors, key=lambda e: e.rank)
    return f"rank {root.rank} in {root.phase}:\n{root.traceback}" if root.traceback else ""


def save_entry(directory: str | os.PathLike, entry: Entry) -> Path:
    """Write ``entry``, or merge it into the entry of the same bug (``Entry.same_bug``).

    Merging keeps the smaller case (both reproduce the same signature: that is what
    makes them the same bug) and adds the hits. A known entry is never rewritten:
    a finding that matches it is already counted as a known hit, and one that does
    not is another bug and gets a file of its own. The write is atomic (a temp file
    in the same directory, then ``os.replace``), so a run killed mid-write leaves the
    old file or the new one, never half of one. Returns the file the finding is in.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing, _ = load_corpus(directory)
    for path, old in sorted(existing, key=lambda item: item[1].known is None):  # a known bug first
        if old.same_bug(entry):
            if old.known is not None:
                return path
            smaller = entry if len(dumps(entry.case)) < len(dumps(old.case)) else old
            return _write(path, attrs.evolve(old, case=smaller.case, shrunk=smaller.shrunk, hits=old.hits + entry.hits))
    taken = {path.name for path, _ in existing} | _unreadable_names(directory, existing)
    name = next(candidate for candidate in entry.filename_candidates() if candidate not in taken)
    return _write(directory / name, entry)


def _unreadable_names(directory: Path, readable) -> set[str]:
    """Entry files that did not load: never overwritten, so a hand-edit gone wrong is not lost."""
    good = {path.name for path, _ in readable}
    return {path.name for path in directory.glob("*.json") if path.name not in good}


def rewrite_entry(path: str | os.PathLike, entry: Entry) -> Path:
    """Replace the entry at ``path`` in place (atomically), keeping its file name: its identity."""
    return _write(Path(path), entry)


def _write(path: Path, entry: Entry) -> Path:
    text = entry_text(entry)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def entry_text(entry: Entry) -> str:
    """``entry`` as its file holds it (``entry_from_text`` reads it back)."""
    data = _converter.unstructure(entry)
    for optional in ("cuda", "explanation", "unfinished"):
        if not data[optional]:
            del data[
                optional
            ]  # never checked on a GPU, never explained, finished: entries written before keep their text
    if not data["whole_pool"]:
        del data["whole_pool"]  # likewise: only a framework target's entries say it
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_entry(path: str | os.PathLike) -> Entry:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read: {exc}") from None
    return entry_from_text(text, source=str(path))


def entry_from_text(text: str, *, source: str) -> Entry:
    """The entry ``text`` holds (a file's, or one sent by a fleet's campaign); a ``CorpusError`` naming ``source``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{source}: not valid JSON (truncated or hand-edited?): {exc}") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{source}: a corpus entry is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != ENTRY_SCHEMA_VERSION:
        raise CorpusError(f"{source}: entry schema_version {version!r}, this shardfuzz reads {ENTRY_SCHEMA_VERSION}")
    try:
        return _converter.structure(data, Entry)
    except Exception as exc:
        raise CorpusError(f"{source}: {describe_structure_error(exc, 'entry')}") from None


def load_corpus(directory: str | os.PathLike) -> tuple[list[tuple[Path, Entry]], list[str]]:
    """Every readable entry under ``directory``, and one message per unreadable file."""
    entries: list[tuple[Path, Entry]] = []
    problems: list[str] = []
    directory = Path(directory)
    if not directory.is_dir():
        return entries, problems
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("."):
            continue  # a temp file of an interrupted write, never an entry
        try:
            entries.append((path, load_entry(path)))
        except CorpusError as exc:
            problems.append(str(exc))
    return entries, problems


class KnownBugs(dict):
    """Canonical signature -> the entries that are known bugs on this torch with that signature.

    ``lookup(signature, case)`` is the question to ask of a failure: an entry with the same canonical
    signature whose bug's conditions the case meets. Several entries may share a signature, told apart by
    their ``known.when`` conditions; entries of one bug add up to the bug's conditions (``conditions``).
    """

    def conditions(self, signature: str) -> dict[str, tuple[list[Entry], dict[str, str]]]:
        """Bug name -> its entries with this signature, and the conditions a failure must meet to be that bug:
        one entry's ``known.when``, or what several entries' conditions generalize to (``case.conditions``:
        a value the bug's entries each need but differ in is no condition of the bug)."""
        groups: dict[str, list[Entry]] = {}
        for entry in self.get(canonical_signature(signature), ()):
            groups.setdefault(
                entry.known.bug if entry.known is not None and entry.known.bug else entry.title, []
            ).append(entry)
        return {bug: (entries, generalize([entry.when for entry in entries])) for bug, entries in groups.items()}

    def lookup(self, signature: str, case: Case | None = None) -> Entry | None:
        """The known entry this failure is a finding of (one whose own ``when`` it meets, else its bug's first),
        or None: none matches, or two different bugs match (their triggers overlap, ``bugs.apart`` lists such
        pairs): the corpus cannot tell which bug it is, so it is reported as new rather than counted under the
        wrong one. Where several bugs' generalized conditions match but one bug alone has an entry whose own
        measured conditions the case meets, it is that bug: a generalization is an inference from several entries
        (one whose entries share no label generalizes to no condition at all), an entry's own ``when`` a
        measurement (run Y met DeepSpeed's bf16 BatchNorm bug, ``eedfba77``, and counted it new, because the FSDP2
        BatchNorm limitation's two entries, sharing no condition, matched every case with that signature)."""
        entries = self.get(canonical_signature(signature), ())
        if case is None:
            return entries[0] if entries else None
        dims = dimensions(case)
        matching = [group for group, when in self.conditions(signature).values() if meets(dims, when)]
        if len(matching) > 1:
            measured = [group for group in matching if any(meets(dims, entry.when) for entry in group)]
            matching = measured if len(measured) == 1 else matching
        if len(matching) != 1:
            return None
        (group,) = matching
        return next((entry for entry in group if meets(dims, entry.when)), group[0])

    def bug(self, signature: str) -> str:
        """The name of the bug a signature's first entry is a finding of (its file's title where it names none)."""
        entries = self.get(canonical_signature(signature), ())
        return (entries[0].known.bug or entries[0].title) if entries else signature

    def title(self, signature: str) -> str:
        entries = self.get(canonical_signature(signature), ())
        return entries[0].title if entries else signature


def known_bugs(entries, torch_version: str, *, save_torch: str | None = None) -> KnownBugs:
    """The entries of ``load_corpus`` that are known bugs on ``torch_version`` (loading after ``save_torch``
    saved, in a run across two torches), by canonical signature."""
    known = KnownBugs()
    for _, entry in entries:
        if entry.known_on(torch_version, save_torch=save_torch):
            known.setdefault(entry.signature, []).append(entry)
    return known
