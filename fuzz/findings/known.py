"""A triaged bug (``Entry.known``): what it is, where it is reported, and the version ranges where it reproduces."""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case import Case, dimensions
from shardfuzz.case._validators import strings
from shardfuzz.case.conditions import meets
from shardfuzz.findings.triage import KINDS, Upstream
from shardfuzz.targets.registry import installed_versions

__all__ = ["UPPER_ENDS", "Known"]


@frozen
class Known:
    """A triaged bug: what it is, where it is reported, which torch versions have it, and for a bug met
    through a framework's checkpoint API, which framework versions (``frameworks``: distribution ->
    specifier; the entry is known only where each is installed in its range), whether the bug lies in
    the framework or in torch underneath (``layer``), and the evidence for that (``evidence``: what
    the same case does through plain DCP)."""

    description: str = field(validator=instance_of(str))
    torch: str = field(validator=instance_of(str))  # a PEP 440 specifier set, e.g. ">=2.11,<2.14"
    link: str = field(default="", validator=instance_of(str))
    seen: tuple[str, ...] = field(default=(), converter=strings)  # torch builds it was reproduced on
    # Case dimensions (``case.dimensions``) a failure must also have to count as this bug (``case.conditions``:
    # a value, or values joined by "|", any of which will do).
    # A silent-corruption signature ("values differ" on a key pattern) is broad: without
    # this, a new corruption on the same key would pass as this known one.
    when: dict[str, str] = field(factory=dict)
    frameworks: dict[str, str] = field(factory=dict)
    layer: str = field(default="torch", validator=in_(("torch", "framework")))
    evidence: str = field(default="", validator=instance_of(str))
    # A bug of a checkpoint saved under one torch and loaded under another: the save side's
    # torch range (``torch`` is then the load side's). Empty: one torch did both.
    save_torch: str = field(default="", validator=instance_of(str))
    # What each bounded range's upper end means (``UPPER_ENDS``), by range: "torch", "save_torch" or a
    # framework's distribution. Every range with an upper bound says which; see ``beyond_checked``.
    upper: dict[str, str] = field(factory=dict)
    # What kind of finding it is (``triage.KINDS``; only "bug" counts as a bug) and, for the others, why: the
    # document or maintainer comment that says so, or why nothing promises it.
    kind: str = field(default="bug", validator=in_(KINDS))
    kind_reason: str = field(default="", validator=instance_of(str))
    # The root cause this entry is one finding of: entries of one bug share it (``findings.bugs``).
    bug: str = field(default="", validator=instance_of(str))
    # Where it stands upstream (None: not triaged upstream yet; ``link`` is the older, untyped field).
    upstream: Upstream | None = field(default=None)

    def __attrs_post_init__(self):
        if self.kind != "bug" and not self.kind_reason:
            raise ValueError(
                f"known.kind {self.kind!r} says why in known.kind_reason (a document, a comment, a reason)"
            )
        ranges = self.ranges()
        for name, meaning in self.upper.items():
            if meaning not in UPPER_ENDS:
                raise ValueError(f"known.upper[{name!r}] is {meaning!r}: one of {', '.join(UPPER_ENDS)}")
            if name not in ranges or not _upper_bounds(ranges[name]):
                raise ValueError(f"known.upper[{name!r}]: there is no {name} range with an upper bound to qualify")
        for name, specifier in ranges.items():
            if _upper_bounds(specifier) and name not in self.upper:
                raise ValueError(
                    f"known {name} range {specifier!r} has an upper bound: say in known.upper[{name!r}] whether it is "
                    f"where the bug was fixed ('fixed-in') or the newest release checked ('last-checked')"
                )

    @property
    def report(self) -> str:
        """The bug's own report (or the PR that fixed it), never a related thread; the untyped ``link`` where the
        upstream status is not triaged; else ''."""
        if self.upstream is not None:
            own = self.upstream.of("reported") or self.upstream.of("fixed-by")
            return own[0].url if own else ""
        return self.link

    def ranges(self) -> dict[str, str]:
        """Every version range of the entry, by name: "torch", "save_torch" (if any), each framework."""
        return {"torch": self.torch, **({"save_torch": self.save_torch} if self.save_torch else {}), **self.frameworks}

    def matches(self, case: Case) -> bool:
        return meets(dimensions(case), self.when)

    @torch.validator
    def _specifier(self, attribute, value):
        _check_specifier("known.torch", value)

    @save_torch.validator
    def _save_specifier(self, attribute, value):
        if value:
            _check_specifier("known.save_torch", value)

    @frameworks.validator
    def _framework_specifiers(self, attribute, value):
        for name, specifier in value.items():
            _check_specifier(f"known.frameworks[{name!r}]", specifier)

    def applies_to(
        self, torch_version: str, framework_versions: dict[str, str] | None = None, *, save_torch: str | None = None
    ) -> bool:
        """Whether the bug is known on this torch and on the installed frameworks (``framework_versions``,
        default: looked up), each of which must be installed in its range. ``save_torch``: the torch
        that saved, in a run across two (``torch_version`` is then the loading one's).

        A bug of one torch is known in a run across two where either torch is in its range (the
        case's same-torch runs tell which, see ``docs/cross-version.md``); a bug across two torches,
        only in a run across two, each in its own range.

        A version above a ``last-checked`` upper end counts as in range (``beyond_checked`` names it): the bug
        is presumed there until a run shows otherwise."""
        covers = self._covers
        if self.save_torch:
            if save_torch is None or not covers("save_torch", save_torch):
                return False
            if not covers("torch", torch_version):
                return False
        elif not any(covers("torch", v) for v in {torch_version, save_torch or torch_version}):
            return False
        installed = self._installed(framework_versions)
        return all(name in installed and covers(name, installed[name]) for name in self.frameworks)

    def _covers(self, name: str, version: str) -> bool:
        specifier = self.ranges()[name]
        return _in_range(specifier, version) or (
            self.upper.get(name) == "last-checked" and _above_upper_end(specifier, version)
        )

    def _installed(self, framework_versions: dict[str, str] | None) -> dict[str, str]:
        """``framework_versions`` where given, else the versions of the entry's frameworks installed here."""
        return framework_versions if framework_versions is not None else installed_versions(self.frameworks)

    def _versions_in_use(
        self, torch_version: str, framework_versions: dict[str, str] | None, save_torch: str | None
    ) -> dict[str, str]:
        installed = self._installed(framework_versions)
        if self.save_torch:
            in_use = {"torch": torch_version, **({"save_torch": save_torch} if save_torch else {})}
        else:
            in_use = {"torch": torch_version}
        return {**in_use, **{name: installed[name] for name in self.frameworks if name in installed}}

    def beyond_checked(
        self, torch_version: str, framework_versions: dict[str, str] | None = None, *, save_torch: str | None = None
    ) -> list[str]:
        """The versions in use above a ``last-checked`` upper end, each as "accelerate 1.16.0 (last checked:
        <=1.15.0)": the bug is presumed there, unconfirmed. A failure there extends the range; a pass may be
        a fix (check it, then say ``fixed-in``)."""
        return self._above("last-checked", "last checked", torch_version, framework_versions, save_torch)

    def past_fix(
        self, torch_version: str, framework_versions: dict[str, str] | None = None, *, save_torch: str | None = None
    ) -> list[str]:
        """The versions in use at or above a ``fixed-in`` upper end, each as "torch 2.14.1 (fixed in: <2.14)":
        there the case is expected to pass, and failing the same way again is a regression."""
        return self._above("fixed-in", "fixed in", torch_version, framework_versions, save_torch)

    def _above(
        self,
        meaning: str,
        words: str,
        torch_version: str,
        framework_versions: dict[str, str] | None,
        save_torch: str | None,
    ) -> list[str]:
        """The versions in use above an upper end that means ``meaning``, each with the range, in ``words``."""
        ranges = self.ranges()
        return [
            f"{name} {version} ({words}: {ranges[name]})"
            for name, version in self._versions_in_use(torch_version, framework_versions, save_torch).items()
            if self.upper.get(name) == meaning and _above_upper_end(ranges[name], version)
        ]

    def out_of_range(self, framework_versions: dict[str, str] | None = None) -> str:
        """The installed framework versions outside the entry's ranges (say, a fixed release), or ''."""
        installed = self._installed(framework_versions)
        return ", ".join(
            f"{name} {installed[name]} (known for {spec})"
            for name, spec in self.frameworks.items()
            if name in installed and not _in_range(spec, installed[name])
        )


#: What a known range's upper end means. ``fixed-in``: the first release without the bug (a pass above it is
#: expected; the same failure there again is a regression). ``last-checked``: the newest release the bug was
#: checked on (above it the bug is presumed still there: a failure says to extend the range, a pass to check
#: whether that release fixed it). A release of torch or of a framework never turns a replay red by itself.
UPPER_ENDS = ("fixed-in", "last-checked")
_UPPER_OPERATORS = ("<", "<=")


def _upper_bounds(specifier: str):
    from packaging.specifiers import SpecifierSet

    return [clause for clause in SpecifierSet(specifier) if clause.operator in _UPPER_OPERATORS]


def _above_upper_end(specifier: str, version: str) -> bool:
    """Whether ``version`` meets every lower bound of ``specifier`` and lies above (at, for ``<``) its upper end."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    release = Version(version.split("+")[0])
    clauses = list(SpecifierSet(specifier))
    upper = [c for c in clauses if c.operator in _UPPER_OPERATORS]
    lower = [c for c in clauses if c.operator not in _UPPER_OPERATORS]
    return (
        bool(upper)
        and all(c.contains(release, prereleases=True) for c in lower)
        and not all(c.contains(release, prereleases=True) for c in upper)
    )


def _check_specifier(what: str, value: str) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(value)
    except InvalidSpecifier as exc:
        raise ValueError(f"{what} {value!r} is not a version specifier: {exc}") from None


def _in_range(specifier: str, version: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return SpecifierSet(specifier).contains(Version(version.split("+")[0]), prereleases=True)
