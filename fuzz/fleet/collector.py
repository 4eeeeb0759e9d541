"""The fleet's corpus and reports, kept on the driver's machine (a Ray actor there; a plain class here).

Campaigns send each new finding the moment they find it (``found``); the collector saves it into the
fleet's corpus with ``save_entry``, which merges a finding of a bug the corpus already holds into that
bug's entry (so a bug two campaigns find at once is one entry with both hits). The driver polls for
what is new (``poll``) to show it, and for the campaigns' latest report snapshots to merge. Calls are
served one at a time, so two findings never interleave their read-merge-write of an entry.
"""

from __future__ import annotations

import time
from pathlib import Path

from shardfuzz.findings.corpus import entry_from_text, load_entry, rewrite_entry, save_entry

__all__ = ["Collector"]


class Collector:
    """``corpus``: the fleet's corpus directory, on this machine; ``budget``: each campaign's seconds, counted
    from its first start (as ``run --workers`` counts each worker's from its own), restarts included."""

    def __init__(self, corpus: str, budget: float):
        self.corpus, self.budget = Path(corpus), budget
        self.ends: dict[int, float] = {}  # campaign -> when its budget ends (time.time())
        self.corpus.mkdir(parents=True, exist_ok=True)
        self.attempts: dict[int, int] = {}  # campaign -> its latest attempt (0: first start; 1 on: restarts)
        self.saved: dict[tuple[int, int, str], str] = {}  # (campaign, attempt, signature) -> its entry's file name
        self.reports: dict[tuple[int, int], dict] = {}  # the latest snapshot of each attempt of each campaign
        self.news: list[str] = []
        self.stopping: str | None = None

    def start(self, campaign: int) -> tuple[int, float]:
        """A campaign (re)starting: its attempt number (0 the first time; a restart is news) and when its budget
        ends, in ``time.time()`` seconds."""
        attempt = self.attempts.get(campaign, -1) + 1
        self.attempts[campaign] = attempt
        end = self.ends.setdefault(campaign, time.time() + self.budget)
        if attempt:
            self.news.append(f"campaign {campaign} restarted (attempt {attempt}): its actor or node had died")
        return attempt, end

    def corpus_texts(self) -> dict[str, str]:
        """The fleet's corpus as file name -> text, for a campaign to start from (its known bugs). Read, not parsed:
        the campaign parses them (and names a bad file) as any run does, while the collector serves the others."""
        return {
            path.name: path.read_text() for path in sorted(self.corpus.glob("*.json")) if not path.name.startswith(".")
        }

    def found(self, campaign: int, attempt: int, text: str) -> str:
        """Save a campaign's new finding (``entry_text``) into the fleet's corpus; the file it is in."""
        entry = entry_from_text(text, source=f"campaign {campaign}'s finding")
        before = {path.name for path in self.corpus.glob("*.json")}
        name = save_entry(self.corpus, entry).name
        self.saved[(campaign, attempt, entry.signature)] = name
        if name in before:
            self.news.append(f"campaign {campaign}: [{entry.triage}] {entry.summary[:150]}\n     merged into {name}")
        else:
            self.news.append(f"NEW from campaign {campaign}: [{entry.triage}] {entry.summary[:150]}\n     saved {name}")
        return name

    def explained(self, campaign: int, attempt: int, text: str) -> None:
        """A finding's explanation, kept in its fleet entry where that entry holds the case it explains and
        none yet (a finding merged into another campaign's smaller case keeps that case's)."""
        from shardfuzz.search.explain import with_explanation

        entry = entry_from_text(text, source=f"campaign {campaign}'s explained finding")
        name = self.saved.get((campaign, attempt, entry.signature))
        if name is None or entry.explanation is None:
            return
        path = self.corpus / name
        current = load_entry(path)
        if current.known is None and current.explanation is None and current.case == entry.case:
            rewrite_entry(path, with_explanation(current, entry.explanation))

    def flushed(self, campaign: int, attempt: int, report: dict) -> None:
        self.reports[(campaign, attempt)] = report

    def poll(self, reports: bool = True) -> tuple[list[str], list[dict]]:
        """The news since the last poll, and (``reports``) every attempt's latest report snapshot, by campaign and
        attempt ([] without: the snapshots are the bulk of what crosses, so the driver asks only when it shows)."""
        news, self.news = self.news, []
        return news, [self.reports[key] for key in sorted(self.reports)] if reports else []

    def request_stop(self, reason: str) -> None:
        self.stopping = self.stopping or reason

    def stop_reason(self) -> str | None:
        return self.stopping
