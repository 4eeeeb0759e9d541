"""Shrunk failures as JSON files: save atomically, deduplicate by signature, load, match known bugs.

One entry is one file, ``<signature hash>.json``, holding the Case, the verdict's
signature and summary, where it was seen, and, once triaged, a ``known`` block
naming the torch bug and the version range where it reproduces. Loading never
unpickles or executes anything: it is JSON through the same cattrs converter
that checks every field.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Optional

import attrs
import cattrs
from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case import Case, describe_structure_error, dimensions, dumps, from_dict, to_dict
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import TRIAGE_CLASSES, Verdict

__all__ = [
    "Cause", "CorpusError", "Entry", "Known", "KnownBugs", "entry_for", "known_bugs", "load_corpus", "load_entry", "save_entry",
]

ENTRY_SCHEMA_VERSION = 1


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and what is wrong."""


@frozen
class Known:
    """A triaged torch bug: what it is, where it is reported, which torch versions have it."""

    description: str = field(validator=instance_of(str))
    torch: str = field(validator=instance_of(str))  # a PEP 440 specifier set, e.g. ">=2.11,<2.14"
    link: str = field(default="", validator=instance_of(str))
    seen: tuple[str, ...] = field(default=(), converter=tuple)  # torch builds it was reproduced on
    # Case dimensions (``case.dimensions``) a failure must also have to count as this bug.
    # A silent-corruption signature ("values differ" on a key pattern) is broad: without
    # this, a new corruption on the same key would pass as this known one.
    when: dict[str, str] = field(factory=dict)

    def matches(self, case: Case) -> bool:
        dims = dimensions(case)
        return all(dims.get(name) == value for name, value in self.when.items())

    @torch.validator
    def _specifier(self, attribute, value):
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(value)
        except InvalidSpecifier as exc:
            raise ValueError(f"known.torch {value!r} is not a version specifier: {exc}") from None

    def applies_to(self, torch_version: str) -> bool:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        release = Version(torch_version.split("+")[0])
        return SpecifierSet(self.torch).contains(release, prereleases=True)


@frozen
class Cause:
    """What fired: an oracle (``kind="oracle"``, its name, the key) or an exception (its type, the phase)."""

    kind: str = field(validator=in_(("oracle", "exception", "crash", "hang")))
    name: str
    message: str = ""
    ranks: tuple[int, ...] = field(default=(), converter=tuple)
    key: str = ""
    phase: str = ""


@frozen
class Entry:
    """One shrunk failure. ``status`` is the verdict's; ``triage`` is its class as people read it."""

    title: str
    signature: str
    status: str = field(validator=in_(tuple(s for s in TRIAGE_CLASSES if s != "unsupported")))
    case: Case = field(validator=instance_of(Case))
    cause: Optional[Cause] = None
    summary: str = ""
    diagnostics: str = ""  # crash/hang: the ranks' last output and Python stacks
    flaky: bool = False
    other_outcome: str = ""  # flaky: what the confirming re-run gave instead
    target: str = DEFAULT_TARGET
    # Ranks in the world it ran in (the pool's size; 0: the case's own). Ranks on
    # neither side still belong to the world, and some bugs need them (a collective
    # on the default group that they never join).
    world_size: int = 0
    versions: dict[str, str] = field(factory=dict)
    found: str = ""
    hits: int = 1
    known: Optional[Known] = None
    schema_version: int = ENTRY_SCHEMA_VERSION

    @property
    def triage(self) -> str:
        return TRIAGE_CLASSES[self.status]

    def known_on(self, torch_version: str) -> bool:
        """Whether this entry is a known bug on ``torch_version``."""
        return self.known is not None and self.known.applies_to(torch_version)

    @property
    def replay_world_size(self) -> int:
        """Ranks to replay it on: the world it was found in, at least the case's own (exactly the
        case's own where it must fill its process group, as a broadcasting load must)."""
        from shardfuzz.unsupported import exact_world_size

        return exact_world_size(self.case) or max(self.case.world_size, self.world_size)

    @property
    def filename(self) -> str:
        return hashlib.sha1(self.signature.encode()).hexdigest()[:16] + ".json"


_converter = cattrs.Converter(forbid_extra_keys=True)
_converter.register_structure_hook(Case, lambda data, _: from_dict(data))
_converter.register_unstructure_hook(Case, to_dict)


def versions() -> dict[str, str]:
    import hypothesis
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(), "hypothesis": hypothesis.__version__}


def entry_for(case: Case, verdict: Verdict, *, target: str = DEFAULT_TARGET,
              other: Verdict | None = None, world_size: int = 0) -> Entry:
    """The corpus entry for a failure; ``other`` is a confirming re-run that disagreed (flaky)."""
    summary = verdict.summary()
    flaky = ", flaky" if other is not None else ""
    title = f"[{verdict.triage}{flaky}] {summary.split(': ', 1)[-1]}"[:160]
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
        target=target,
        world_size=world_size,
        versions=versions(),
        found=datetime.date.today().isoformat(),
    )


def _root_traceback(verdict: Verdict) -> str:
    """A loud error's traceback on its root rank (the lowest that raised): where torch raised it."""
    if not verdict.errors:
        return ""
    root = min(verdict.errors, key=lambda e: e.rank)
    return f"rank {root.rank} in {root.phase}:\n{root.traceback}" if root.traceback else ""


def save_entry(directory: str | os.PathLike, entry: Entry) -> Path:
    """Write ``entry``; if one with its signature exists, keep the smaller case and add the hits.

    The write is atomic (a temp file in the same directory, then ``os.replace``),
    so a run killed mid-write leaves the old file or the new one, never half of one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / entry.filename
    if path.exists():
        try:
            old = load_entry(path)
        except CorpusError:
            old = None  # unreadable: replace it with the new finding rather than lose that
        if old is not None and old.signature == entry.signature:
            smaller = entry.case if len(dumps(entry.case)) < len(dumps(old.case)) else old.case
            entry = attrs.evolve(old, case=smaller, hits=old.hits + entry.hits)
    text = json.dumps(_converter.unstructure(entry), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=directory)
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


def load_entry(path: str | os.PathLike) -> Entry:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: not valid JSON (truncated or hand-edited?): {exc}") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: a corpus entry is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != ENTRY_SCHEMA_VERSION:
        raise CorpusError(f"{path}: entry schema_version {version!r}, this shardfuzz reads {ENTRY_SCHEMA_VERSION}")
    try:
        return _converter.structure(data, Entry)
    except Exception as exc:  # noqa: BLE001 - cattrs groups; flatten them into one line
        raise CorpusError(f"{path}: {describe_structure_error(exc, 'entry')}") from None


def load_corpus(directory: str | os.PathLike) -> tuple[list[tuple[Path, Entry]], list[str]]:
    """Every readable entry under ``directory``, and one message per unreadable file."""
    entries, problems = [], []
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
    """Signature -> entry, for the entries that are known bugs on this torch.

    ``lookup(signature, case)`` is the question to ask of a failure: the same signature
    *and* the case has the entry's ``known.when`` dimensions.
    """

    def lookup(self, signature: str, case: Case | None = None) -> Entry | None:
        entry = self.get(signature)
        if entry is None or (case is not None and not entry.known.matches(case)):
            return None
        return entry


def known_bugs(entries, torch_version: str) -> KnownBugs:
    """The entries of ``load_corpus`` that are known bugs on ``torch_version``, by signature."""
    return KnownBugs({entry.signature: entry for _, entry in entries if entry.known_on(torch_version)})
