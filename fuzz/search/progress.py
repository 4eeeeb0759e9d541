"""The live progress of a run: a rich panel on a terminal, a plain line every so often in a log.

Both show a snapshot of the run's report (``report.campaign_report`` with
``final=False``): elapsed and remaining time, cases per second, findings by
class, the coverage mix and the slowest recent case. Building a snapshot costs
more than a case, so the display asks for one only when it is due (``due()``).
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]

#: Dimensions whose mix the display shows (all of them go to the report).
MIX = ("save_engine", "load_engine", "optimizer", "save_state_dict", "load_state_dict", "save_mesh")


class Progress:
    """``plain``: force plain lines (default: plain unless stderr is a terminal)."""

    def __init__(self, budget: float, *, plain: bool | None = None, every: float | None = None):
        self.budget = budget
        self.started = time.monotonic()
        self.plain = not sys.stderr.isatty() if plain is None else plain
        self.every = every if every is not None else (10.0 if self.plain else 0.5)
        self.last = 0.0
        self._live = None
        if not self.plain:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:  # rich is a dependency, but a partial install should still run
                self.plain = True
            else:
                self._live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
                self._live.start()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def show(self, snapshot: dict) -> None:
        self.last = time.monotonic()
        if self._live is not None:
            self._live.update(self._panel(snapshot))
        else:
            sys.stderr.write(self.line(snapshot) + "\n")
            sys.stderr.flush()

    def line(self, snapshot: dict) -> str:
        elapsed = time.monotonic() - self.started
        known = sum(k["hits"] for k in snapshot.get("known_failures", []))
        reached, offered = _reached(snapshot)
        return (
            f"[{_clock(elapsed)} / {_clock(self.budget)}] {snapshot.get('activity', 'drawing')}: "
            f"{snapshot['cases_run']} cases ({snapshot['cases_run'] / max(elapsed, 1e-9):.1f}/s); "
            f"new: {_new_findings(snapshot)}; known hits: {known}; coverage {reached}/{offered} values"
            f"{_pairs(snapshot)}{''.join(f'; {name} {rate}' for name, rate in _per_campaign(snapshot))}"
        )

    def _panel(self, snapshot: dict):
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("time", f"{_clock(elapsed)} elapsed, {_clock(max(0.0, self.budget - elapsed))} left")
        table.add_row("now", snapshot.get("activity", "drawing"))
        table.add_row(
            "cases",
            f"{snapshot['cases_run']} ({snapshot['cases_run'] / max(elapsed, 1e-9):.1f}/s), "
            f"{snapshot['passed']} passed",
        )
        table.add_row("new findings", _new_findings(snapshot))
        known = snapshot.get("known_failures", [])
        table.add_row("known bugs", f"{sum(k['hits'] for k in known)} hits of {len(known)}")
        reached, offered = _reached(snapshot)
        table.add_row("coverage", f"{reached}/{offered} offered values reached{_pairs(snapshot)}")
        for dim in MIX:
            values = snapshot.get("coverage", {}).get(dim)
            if values:
                table.add_row(f"  {dim}", " ".join(f"{v}:{n}" for v, n in values.items()))
        for name, rate in _per_campaign(snapshot):
            table.add_row(f"  {name}", rate)
        slow = snapshot.get("slowest_recent_case") or {}
        if slow.get("case"):
            table.add_row("slowest recent", f"{slow['seconds']:.2f} s  {slow['case']}")
        return table

    def message(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def finish(self, snapshot: dict | None = None) -> None:
        if snapshot is not None:
            self.show(snapshot)
        if self._live is not None:
            self._live.stop()
            self._live = None


def _new_findings(snapshot: dict) -> str:
    """Shrunk findings by class, and the new failures still being shrunk (seen, not yet in the corpus)."""
    by_class = ", ".join(f"{n} {c}" for c, n in sorted(snapshot.get("findings_by_class", {}).items()))
    pending = snapshot.get("being_shrunk", 0)
    if pending:
        by_class += f"{' + ' if by_class else ''}{pending} being shrunk"
    return by_class or "none"


def _per_campaign(snapshot: dict) -> list[tuple[str, str]]:
    """Each campaign's cases and rate, in a merged snapshot of several (``run --workers``, ``fleet``)."""
    from shardfuzz.findings.render import campaign_rows

    return [(name, f"{cases} cases ({rate})") for name, cases, rate, _, _ in campaign_rows(snapshot)]


def _reached(snapshot: dict) -> tuple[int, int]:
    """Offered values reached, and offered values. A case names every engine's dimensions, "n/a" where it has no
    such engine; a dimension not offered here (DeepSpeed's, without DeepSpeed) is not counted, or a run showed
    296 of 294 values."""
    coverage, offered = snapshot.get("coverage", {}), snapshot.get("coverage_offered", {})
    if not offered:  # a snapshot that does not say (a fleet's merged view before any campaign has reported)
        reached = sum(len(values) for values in coverage.values())
        return reached, reached
    reached = sum(len(set(values) & set(offered.get(dim, ()))) for dim, values in coverage.items())
    return reached, sum(len(values) for values in offered.values())


def _pairs(snapshot: dict) -> str:
    """The pairs of values reached ('' before the first case)."""
    pairs = snapshot.get("pairwise") or {}
    return f", {pairs['reached']} value pairs" if pairs.get("reached") else ""


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
