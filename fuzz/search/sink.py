"""Where a campaign's findings and reports go besides its own corpus and report file (``RunSink``).

A plain ``shardfuzz run`` has none. A campaign of a fleet (``shardfuzz fleet``) hands each new finding
to the fleet's collector the moment it is found, so that a campaign whose machine dies has lost
nothing it found, and its report snapshots too, for the fleet's live view and merged report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shardfuzz.findings.corpus import Entry

__all__ = ["RunSink"]


class RunSink(Protocol):
    def found(self, entry: Entry) -> None:
        """A new finding's entry, before it is saved to the campaign's own corpus (or merged there)."""

    def explained(self, entry: Entry) -> None:
        """The same finding's entry again, its explanation added (the campaign's corpus has it too)."""

    def flushed(self, report: dict) -> None:
        """A snapshot of the campaign's report (``final`` at the end), as often as it would be written."""

    def stop_reason(self) -> str | None:
        """Why the campaign must stop now (a signal's name: ``EXIT_CODES``), or None; asked between cases."""
