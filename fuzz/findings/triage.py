"""What kind of finding an entry is and where it stands upstream, as typed data (``Known.kind``, ``Known.upstream``).

A finding is counted as a bug only when it is one: torch (or a framework) breaking what it promises. The
other kinds are listed apart and steered around: a documented ``limitation`` (the document or maintainer
comment cited; the strategies use its workaround where there is one), a use that is ``not-promised`` (with
the reason), an ``incompatibility`` across versions (a newer torch's checkpoint an older one cannot read).

Upstream, a link says how it relates to the bug: the issue that ``reported`` this very bug, the PR it was
``fixed-by`` (with the release that shipped it, or "incomplete"), or a ``related`` thread that is not the
same bug. An entry with none of the first two says when it was searched and with which queries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case._validators import strings

__all__ = ["KINDS", "RELATIONS", "Upstream", "UpstreamLink"]

#: What a finding is: only ``bug`` is counted as a bug.
KINDS = ("bug", "limitation", "not-promised", "incompatibility")
#: How an upstream link relates to the entry's bug.
RELATIONS = ("reported", "fixed-by", "related")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@frozen
class UpstreamLink:
    """One upstream issue or PR and how it relates to the bug; ``release``: for ``fixed-by``, the release that
    shipped the fix or "incomplete"; ``note``: what the thread says, in a sentence."""

    relation: str = field(validator=in_(RELATIONS))
    url: str = field(validator=instance_of(str))
    note: str = field(default="", validator=instance_of(str))
    release: str = field(default="", validator=instance_of(str))

    @url.validator
    def _url(self, attribute, value):
        if not value.startswith("https://"):
            raise ValueError(f"upstream link {value!r} is not an https:// address")


def _links(links: Iterable) -> tuple[UpstreamLink, ...]:
    return tuple(links)


@frozen
class Upstream:
    """Where the bug stands upstream: its links, and for a bug with no report, the search that found none."""

    links: tuple[UpstreamLink, ...] = field(default=(), converter=_links)
    searched: str = field(default="", validator=instance_of(str))  # YYYY-MM-DD
    queries: tuple[str, ...] = field(default=(), converter=strings)

    def __attrs_post_init__(self):
        if self.status == "none-found" and not (_DATE.match(self.searched) and self.queries):
            raise ValueError("an upstream status with no report says when it was searched (YYYY-MM-DD) and the queries")

    @property
    def status(self) -> str:
        """``reported``, ``fixed-by``, ``related`` (only related threads) or ``none-found``."""
        relations = {link.relation for link in self.links}
        for relation in RELATIONS:
            if relation in relations:
                return relation
        return "none-found"

    def of(self, relation: str) -> list[UpstreamLink]:
        return [link for link in self.links if link.relation == relation]

    def summary(self) -> str:
        """One cell: the report and the fix, then related threads marked as related."""
        parts = [f"reported: {link.url}" for link in self.of("reported")]
        parts += [f"fixed by {link.url} ({link.release or 'release unknown'})" for link in self.of("fixed-by")]
        parts += [f"related: {link.url}" for link in self.of("related")]
        if not self.of("reported") and not self.of("fixed-by"):
            parts.insert(0, f"no report found (searched {self.searched})" if self.searched else "not searched")
        return "; ".join(parts)
