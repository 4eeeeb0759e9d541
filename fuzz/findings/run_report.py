"""A campaign's report as plain data (the JSON file), written atomically, and several merged into one.

The JSON report is the source the other formats (``report_formats``) are made
from. ``run`` rewrites it every so often while it works, so a run that is
killed outright still leaves the report of the last flush behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from shardfuzz.case import to_dict
from shardfuzz.verdict import masked_signature

__all__ = ["campaign_report", "merge_reports", "write_atomic", "read_report"]

SCHEMA_VERSION = 2


def campaign_report(
    result,
    *,
    meta: dict,
    known,
    corpus_files: dict[str, str],
    explanations: dict[str, str] | None = None,
    offered: dict | None = None,
    pool_events=(),
    final: bool = True,
) -> dict:
    """The report of ``result`` (a ``CampaignResult``) so far; ``meta`` is how the run was set up; ``explanations``:
    a finding's explanation in a line, by signature (``Explanation.summary``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        **meta,
        "final": final,
        "stopped": result.stopped if final else "",
        "wall_seconds": round(result.wall_seconds if final else _elapsed(result), 3),
        "seconds_in_cases": round(result.seconds_in_cases, 3),
        "cases_run": result.cases_run,
        "passed": result.passed,
        "refereed": result.refereed,
        "replayed_from_database": result.replayed_from_database,
        "pool_events": [
            {"kind": e.kind, "rank": e.rank, "how": e.how, "log_tail": e.log_tail[-2000:]} for e in pool_events
        ],
        "findings_by_class": dict(result.findings_by_class()),
        "activity": "finished" if final else result.activity,
        "being_shrunk": len(result.shrinking),  # new failures seen, not yet shrunk (nor in "failures")
        "failures": [
            {
                "signature": s,
                "status": f.verdict.status,
                "class": f.verdict.triage,
                "summary": f.verdict.summary(),
                "hits": f.hits,
                "flaky": f.flaky,
                "shrunk": f.shrunk,
                "unfinished": list(f.unfinished),
                "explanation": (explanations or {}).get(s),
                "shrink_cases": f.shrink_cases,
                "shrink_seconds": f.shrink_seconds,
                "from_database": f.from_database,
                "seconds_to_find": round(f.seconds, 2),
                "other_outcome": f.other.summary() if f.other else None,
                "corpus_file": corpus_files.get(s),
                "case": to_dict(f.case),
            }
            for s, f in result.findings.items()
        ],
        "unsupported": [{"signature": s, "hits": n} for s, n in result.unsupported.items()],
        "known_failures": [
            {
                "signature": masked_signature(s),
                "title": known.title(masked_signature(s)),
                "bug": known.bug(s),
                "hits": n,
                "seconds": round(result.known_seconds[s], 2),
                "unmasked": result.known_unmasked[s],
                "last_unmasked": result.known_unmasked_example.get(s),
            }
            for s, n in result.known_hits.items()
        ],
        "time_spent": _time_spent(result, final),
        "steering": [
            {
                "signature": masked_signature(s),
                "title": known.title(masked_signature(s)),
                "conditions": conditions,
                "masked": result.masked[s],
                "probes": result.probes[s],
            }
            for s, conditions in result.steering.items()
        ],
        "pairwise": dict(result.pairwise),
        "masked_draws": sum(result.masked.values()),
        "cases_after_failure": result.cases_after_failure,
        "rounds_filtered_out": result.rounds_filtered_out,
        "probe_draws": sum(result.probes.values()),
        "slowest_recent_case": {"seconds": round(result.slowest_recent[0], 3), "case": result.slowest_recent[1]},
        "coverage": {dim: dict(sorted(values.items())) for dim, values in sorted(result.coverage.items())},
        "coverage_offered": {dim: sorted(values) for dim, values in sorted((offered or {}).items())},
        "timeline": list(result.timeline),
    }


def _time_spent(result, final: bool) -> dict:
    """Seconds and share of the wall time by what they went to; the remainder is drawing and Hypothesis."""
    wall = max(result.wall_seconds if final else _elapsed(result), 1e-9)
    spent = {name: result.time_spent.get(name, 0.0) for name in _time_categories()}
    spent["drawing and Hypothesis"] = max(0.0, wall - sum(spent.values()))
    return {name: {"seconds": round(seconds, 2), "share": round(seconds / wall, 4)} for name, seconds in spent.items()}


def _time_categories():
    from shardfuzz.findings.campaign_result import TIME_CATEGORIES

    return TIME_CATEGORIES


def _elapsed(result) -> float:
    return time.monotonic() - result.started


def merge_reports(reports: list[dict], *, meta: dict) -> dict:
    """One report for several campaigns (``run --workers``, ``fleet``): counts add, findings unite."""
    merged = {
        "schema_version": SCHEMA_VERSION,
        **meta,
        "final": all(r.get("final") for r in reports),
        "stopped": ",".join(sorted({r.get("stopped", "") for r in reports} - {""})),
        "workers": len(reports),
    }
    merged["wall_seconds"] = max((r["wall_seconds"] for r in reports), default=0.0)
    for name in ("seconds_in_cases", "cases_run", "passed", "refereed", "replayed_from_database"):
        merged[name] = sum(r.get(name, 0) for r in reports)
    merged["pool_events"] = [e for r in reports for e in r.get("pool_events", [])]
    for name in ("failures", "unsupported", "known_failures"):
        merged[name] = _by_signature(item for report in reports for item in report.get(name, []))
    merged["findings_by_class"] = dict(Counter(f["class"] for f in merged["failures"]))
    slowest = [r["slowest_recent_case"] for r in reports if r.get("slowest_recent_case")]
    merged["slowest_recent_case"] = max(slowest, key=lambda s: s["seconds"], default={"seconds": 0.0, "case": ""})
    coverage: dict[str, Counter] = {}
    for report in reports:
        for dim, values in report.get("coverage", {}).items():
            coverage.setdefault(dim, Counter()).update(values)
    merged["coverage"] = {dim: dict(sorted(values.items())) for dim, values in sorted(coverage.items())}
    merged["coverage_offered"] = next((r["coverage_offered"] for r in reports if r.get("coverage_offered")), {})
    merged["timeline"] = _merge_timelines([r.get("timeline", []) for r in reports])
    walls = sum(r.get("wall_seconds", 0.0) for r in reports) or 1e-9
    seconds: Counter = Counter()
    for report in reports:
        for name, spent in report.get("time_spent", {}).items():
            seconds[name] += spent["seconds"]
    merged["time_spent"] = {name: {"seconds": round(n, 2), "share": round(n / walls, 4)} for name, n in seconds.items()}
    merged["masked_draws"] = sum(r.get("masked_draws", 0) for r in reports)
    merged["cases_after_failure"] = sum(r.get("cases_after_failure", 0) for r in reports)
    merged["rounds_filtered_out"] = sum(r.get("rounds_filtered_out", 0) for r in reports)
    merged["probe_draws"] = sum(r.get("probe_draws", 0) for r in reports)
    merged["steering"] = [item for r in reports for item in r.get("steering", [])]
    merged["worker_reports"] = [  # a fleet's campaign also says which attempt and where (``fleet.campaign``)
        {k: r.get(k) for k in ("worker", "cases_run", "wall_seconds", "stopped")}
        | {k: r[k] for k in ("attempt", "node") if k in r}
        for r in reports
    ]
    return merged


def _by_signature(items) -> list[dict]:
    """One item per signature, the first seen, with the hits of all of them added."""
    merged: dict[str, dict] = {}
    for item in items:
        if item["signature"] in merged:
            merged[item["signature"]]["hits"] += item["hits"]
            if "seconds" in item:
                merged[item["signature"]]["seconds"] = merged[item["signature"]].get("seconds", 0.0) + item["seconds"]
        else:
            merged[item["signature"]] = dict(item)
    return list(merged.values())


_SUMMED = ("cases", "passed", "known_hits", "unsupported", "hangs", "crashes", "shrinking", "pool_seconds")


def _merge_timelines(timelines: list[list[dict]]) -> list[dict]:
    """Add the workers' cumulative counts at each moment any of them sampled."""
    moments = sorted({point["t"] for timeline in timelines for point in timeline})
    merged = []
    for t in moments:
        point = {"t": t, **dict.fromkeys(_SUMMED, 0), "findings": Counter(), "coverage": {}}
        for timeline in timelines:
            before = [p for p in timeline if p["t"] <= t]
            if not before:
                continue
            last = before[-1]
            for name in _SUMMED:
                point[name] += last.get(name, 0)
            point["findings"].update(last.get("findings", {}))
            for dim, count in last.get("coverage", {}).items():  # a lower bound: workers overlap
                point["coverage"][dim] = max(point["coverage"].get(dim, 0), count)
        point["findings"] = dict(point["findings"])
        merged.append(point)
    return merged


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_report(path: str | os.PathLike) -> dict:
    """A JSON report; a ``ValueError`` naming the file if it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable shardfuzz report ({exc})") from None
    if not isinstance(data, dict) or "cases_run" not in data:
        raise ValueError(f"{path}: not a shardfuzz run report (no 'cases_run')")
    return data
