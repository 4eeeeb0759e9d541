"""A run's JSON report rendered for people and CI: markdown, JUnit XML, self-contained HTML.

Each function takes the report dict (``report.campaign_report``) and returns
text. The HTML page embeds its plots as inline SVG drawn by matplotlib (the
``report`` extra), so it is one file with nothing to fetch: mail it, attach it
to a CI run, open it the morning after.
"""

from __future__ import annotations

import html as html_escape
import io
import itertools
import json
import xml.etree.ElementTree as ET

__all__ = ["markdown", "junit_xml", "html_page", "headline", "campaign_rows", "FORMATS"]


def headline(report: dict) -> str:
    rate = report["cases_run"] / max(report["wall_seconds"], 1e-9)
    known = sum(k["hits"] for k in report.get("known_failures", []))
    stopped = f", stopped by {report['stopped']}" if report.get("stopped") not in ("", "budget", None) else ""
    across = report.get("across_torches")
    torch = (
        f"saved under torch {across['save_torch']}, loaded under torch {across['load_torch']}"
        if across
        else f"on torch {report.get('torch', '?')}"
    )
    return (
        f"{report['cases_run']} cases in {report['wall_seconds']:.0f} s ({rate:.1f}/s) {torch}: "
        f"{report['passed']} passed{_refereed(report)}, {len(report['failures'])} new failure(s), "
        f"{known} hit(s) of {_known_bugs(report)}{stopped}"
    )


def _refereed(report: dict) -> str:
    """' (3 of them float32 rounding, passing in float64)', where the referee passed any."""
    n = report.get("refereed", 0)
    return f" ({n} of them float32 rounding, passing in float64)" if n else ""


def _known_bugs(report: dict) -> str:
    """'5 known bug(s) in 7 entries': bugs (root causes) counted apart from the entries that found them."""
    hit = report.get("known_failures", [])
    bugs = {k.get("bug") or k["signature"] for k in hit}
    return f"{len(bugs)} known bug(s)" + (f" in {len(hit)} entries" if len(hit) != len(bugs) else "")


def campaign_rows(report: dict) -> list[tuple[str, int, str, str, str]]:
    """One row per campaign of a merged report (``run --workers``, ``fleet``; [] for one campaign): its name (with
    its attempt where Ray restarted it), cases, rate, where it ran and how it ended."""
    rows = report.get("worker_reports") or []
    if len(rows) < 2 and not any(row.get("attempt") for row in rows):
        return []
    return [
        (
            f"campaign {row.get('worker')}" + (f", attempt {row['attempt']}" if row.get("attempt") else ""),
            row.get("cases_run") or 0,
            f"{(row.get('cases_run') or 0) / max(row.get('wall_seconds') or 0, 1e-9):.1f}/s",
            row.get("node") or "-",
            row.get("stopped") or "-",
        )
        for row in rows
    ]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    lines = ["# shardfuzz run", "", headline(report), ""]
    lines += [
        f"- world size {report.get('world_size')}, target `{report.get('target')}`, seed {report.get('seed')}, "
        f"budget {report.get('budget_seconds')} s, database `{report.get('database') or 'none'}`"
        f" ({report.get('replayed_from_database', 0)} example(s) replayed)",
        "",
    ]
    across = report.get("across_torches")
    if across:
        lines += [f"- saved under {across['save']}", f"- loaded under {across['load']}"]
        lines += [f"- left out (one torch lacks it): {name}: {why}" for name, why in across["left_out"].items()]
        lines += [f"- continuation: {across['continuation']}", ""]
    campaigns = campaign_rows(report)
    if campaigns:
        lines += ["## Campaigns", "", "| campaign | cases | cases/s | node | ended |", "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(_cell(cell) for cell in row)} |" for row in campaigns] + [""]
    lines += ["## New failures", ""]
    if report["failures"]:
        lines += [
            "| class | summary | hits | shrunk | from database | found after | reproducer |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in report["failures"]:
            lines.append(
                f"| {f['class']} | {_cell(f['summary'][:200])} | {f['hits']} | "
                f"{'yes' if f.get('shrunk', True) else 'partly'} | {'yes' if f.get('from_database') else 'no'} | "
                f"{f.get('seconds_to_find', 0):.0f} s | `{f.get('corpus_file') or '-'}` |"
            )
        explained = [f for f in report["failures"] if f.get("explanation") or f.get("unfinished")]
        if explained:
            lines += ["", "What each measured about itself (its neighbours; `shardfuzz explain ENTRY`):", ""]
        for f in explained:
            left = f" Not finished: {', '.join(f['unfinished'])}." if f.get("unfinished") else ""
            lines.append(f"- `{f.get('corpus_file') or f['signature'][:60]}`: {f.get('explanation') or ''}{left}")
    else:
        lines.append("None.")
    lines += ["", "## Known torch bugs hit", ""]
    if report.get("known_failures"):
        lines += ["| hits | not masked | seconds | bug |", "|---|---|---|---|"]
        lines += [
            f"| {k['hits']} | {k.get('unmasked', '')} | {k.get('seconds', 0.0):.1f} | {_cell(k['title'][:200])} |"
            for k in report["known_failures"]
        ]
    else:
        lines.append("None.")
    if report.get("unsupported"):
        lines += ["", "## Documented-unsupported combinations", "", "| hits | rule |", "|---|---|"]
        lines += [f"| {u['hits']} | {_cell(u['signature'][:200])} |" for u in report["unsupported"]]
    slow = report.get("slowest_recent_case") or {}
    if slow.get("case"):
        lines += ["", f"Slowest of the last 100 cases: {slow['seconds']:.2f} s, {slow['case']}"]
    if report.get("time_spent"):
        lines += ["", "## Where the time went", "", "| what | seconds | share |", "|---|---|---|"]
        lines += [f"| {name} | {seconds:.1f} | {100 * share:.1f}% |" for name, seconds, share in _time_table(report)]
        lines += [
            "",
            f"{report.get('masked_draws', 0)} draws masked by steering away from known bugs "
            f"({report.get('probe_draws', 0)} more run anyway, to check the masks).",
        ]
    lines += ["", "## Coverage", "", "| dimension | cases per value | not reached |", "|---|---|---|"]
    offered = report.get("coverage_offered", {})
    for dim, values in report.get("coverage", {}).items():
        missing = sorted(set(offered.get(dim, [])) - set(values))
        lines.append(f"| {dim} | {', '.join(f'{v}: {n}' for v, n in values.items())} | {', '.join(missing) or '-'} |")
    return "\n".join(lines) + "\n"


def junit_xml(report: dict) -> str:
    """One test case per new failure (a ``failure``), per known bug hit (``skipped``), one for the run."""
    suite = ET.Element("testsuite", name="shardfuzz", time=f"{report['wall_seconds']:.3f}")
    cases = 0
    for f in report["failures"]:
        case = ET.SubElement(
            suite, "testcase", classname=f"shardfuzz.{f['class'].replace(' ', '_')}", name=f["signature"][:200]
        )
        failure = ET.SubElement(case, "failure", message=f["summary"][:500], type=f["status"])
        failure.text = f["summary"]
        out = ET.SubElement(case, "system-out")
        out.text = (
            f"reproducer: {f.get('corpus_file') or '-'}\nhits: {f['hits']}\n"
            f"case: {json.dumps(f['case'], sort_keys=True)}"
        )
        cases += 1
    for k in report.get("known_failures", []):
        case = ET.SubElement(suite, "testcase", classname="shardfuzz.known", name=k["signature"][:200])
        ET.SubElement(case, "skipped", message=f"known torch bug, hit {k['hits']} time(s): {k['title'][:300]}")
        cases += 1
    run = ET.SubElement(
        suite, "testcase", classname="shardfuzz.search.campaign", name="campaign", time=f"{report['wall_seconds']:.3f}"
    )
    out = ET.SubElement(run, "system-out")
    out.text = headline(report)
    cases += 1
    for name, count, rate, node, ended in campaign_rows(report):
        campaign = ET.SubElement(suite, "testcase", classname="shardfuzz.search.campaign", name=name)
        ET.SubElement(campaign, "system-out").text = f"{count} cases ({rate}) on {node}, ended: {ended}"
        cases += 1
    suite.set("tests", str(cases))
    suite.set("failures", str(len(report["failures"])))
    suite.set("skipped", str(len(report.get("known_failures", []))))
    suite.set("errors", "0")
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _plots(report: dict) -> list[tuple[str, str]]:
    """(title, inline SVG) for each plot; matplotlib is imported here, lazily."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "the HTML report draws its plots with matplotlib: pip install 'shardfuzz[report]' (or matplotlib)"
        ) from exc
    timeline = report.get("timeline", [])
    t = [p["t"] / 60 for p in timeline]
    figures = []

    def svg(fig) -> str:
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
        text = buffer.getvalue()
        return text[text.find("<svg") :]

    fig, ax = plt.subplots(figsize=(8, 3))
    rates = [(b["cases"] - a["cases"]) / max(b["t"] - a["t"], 1e-9) for a, b in itertools.pairwise(timeline)]
    ax.plot(t[1:], rates, drawstyle="steps-pre", color="tab:blue", label="cases / s")
    _mark_events(ax, timeline, t)
    ax.set_xlabel("minutes")
    ax.set_ylabel("cases / s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper right")
    figures.append(("Cases per second, and what slowed them", svg(fig)))

    fig, ax = plt.subplots(figsize=(8, 3))
    offered = report.get("coverage_offered", {})
    total = sum(len(values) for values in offered.values())
    if total:
        reached = [
            sum(min(n, len(offered.get(dim, ()))) for dim, n in p.get("coverage", {}).items()) / total for p in timeline
        ]
        ax.plot(t, reached, drawstyle="steps-post")
    ax.set_xlabel("minutes")
    ax.set_ylabel("share of offered values reached")
    ax.set_ylim(0, 1.05)
    figures.append((f"Coverage: share of the {total} offered dimension values reached", svg(fig)))

    fig, ax = plt.subplots(figsize=(8, 3))
    classes = sorted({c for p in timeline for c in p.get("findings", {})})
    for triage in classes:
        ax.plot(t, [p.get("findings", {}).get(triage, 0) for p in timeline], drawstyle="steps-post", label=triage)
    ax.plot(
        t, [p.get("known_hits", 0) for p in timeline], drawstyle="steps-post", linestyle=":", label="known bug hits"
    )
    ax.set_xlabel("minutes")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    figures.append(("Findings over time by class", svg(fig)))
    return figures


def _mark_events(ax, timeline: list[dict], t: list[float]) -> None:
    """Shade the stretches spent shrinking; a line where a hang, a crash or a slow pool (re)start happened."""
    shading = False
    for i, point in enumerate(timeline):
        if point.get("shrinking") and (i == 0 or not timeline[i - 1].get("shrinking")):
            start = t[i - 1] if i else t[i]
            end = next((t[j] for j in range(i + 1, len(timeline)) if not timeline[j].get("shrinking")), t[-1])
            ax.axvspan(start, end, color="tab:green", alpha=0.15, label=None if shading else "shrinking")
            shading = True
    styles = {
        "hangs": ("tab:red", "hang"),
        "crashes": ("black", "crash"),
        "pool_seconds": ("tab:orange", "pool start or restart (> 1 s)"),
    }
    for name, (colour, text) in styles.items():
        labelled = False
        for a, b, when in zip(timeline, timeline[1:], t[1:]):
            grew = b.get(name, 0) - a.get(name, 0)
            if grew > (1.0 if name == "pool_seconds" else 0):
                ax.axvline(when, color=colour, linewidth=0.8, linestyle="--", label=None if labelled else text)
                labelled = True


def _time_table(report: dict) -> list[tuple[str, float, float]]:
    """(what, seconds, share of the wall time), largest first."""
    spent = report.get("time_spent", {})
    return sorted(((name, v["seconds"], v["share"]) for name, v in spent.items()), key=lambda row: -row[1])


def _heat_table(report: dict) -> str:
    """Dimension x value: cases per value, shaded by count within the row; offered values never reached in red."""
    esc = html_escape.escape
    offered = report.get("coverage_offered", {})
    coverage = report.get("coverage", {})
    rows = []
    for dim in sorted(set(coverage) | set(offered)):
        values = dict(coverage.get(dim, {}))
        for value in offered.get(dim, ()):
            values.setdefault(value, 0)
        top = max(values.values(), default=0) or 1
        cells = "".join(
            f'<td class="heat" style="background:{_shade(n / top) if n else "#f4a6a6"}" '
            f'title="{esc(dim)}={esc(str(v))}: {n} cases">{esc(str(v))}<br><b>{n}</b></td>'
            for v, n in sorted(values.items(), key=lambda item: str(item[0]))
        )
        rows.append(f"<tr><th>{esc(dim)}</th>{cells}</tr>")
    return "<table class=heat>" + "".join(rows) + "</table>"


def _shade(fraction: float) -> str:
    """White to blue by fraction of the row's largest count."""
    level = int(255 - 140 * max(0.0, min(1.0, fraction)))
    return f"rgb({level},{level + (255 - level) // 3},255)"


def html_page(report: dict) -> str:
    """A self-contained HTML page: headline, plots, findings, known bugs, coverage."""
    esc = html_escape.escape
    rows = (
        "".join(
            f"<tr><td>{esc(f['class'])}</td><td>{esc(f['summary'][:300])}</td><td>{f['hits']}</td>"
            f"<td>{'yes' if f.get('shrunk', True) else 'partly'}</td><td><code>{esc(f.get('corpus_file') or '-')}</code></td></tr>"
            for f in report["failures"]
        )
        or "<tr><td colspan=5>None.</td></tr>"
    )
    known = (
        "".join(
            f"<tr><td>{k['hits']}</td><td>{k.get('seconds', 0.0):.1f}</td><td>{esc(k['title'][:300])}</td></tr>"
            for k in report.get("known_failures", [])
        )
        or "<tr><td colspan=3>None.</td></tr>"
    )
    offered = report.get("coverage_offered", {})
    coverage = "".join(
        f"<tr><td>{esc(dim)}</td><td>{esc(', '.join(f'{v}: {n}' for v, n in values.items()))}</td>"
        f"<td>{esc(', '.join(sorted(set(offered.get(dim, [])) - set(values))) or '-')}</td></tr>"
        for dim, values in report.get("coverage", {}).items()
    )
    plots = "".join(f"<h2>{esc(title)}</h2>\n{svg}\n" for title, svg in _plots(report))
    campaigns = "".join(
        "<tr>" + "".join(f"<td>{esc(str(cell))}</td>" for cell in row) + "</tr>" for row in campaign_rows(report)
    )
    if campaigns:
        campaigns = (
            "<h2>Campaigns</h2>\n<table><tr><th>campaign</th><th>cases</th><th>cases/s</th><th>node</th><th>ended</th>"
            f"</tr>{campaigns}</table>\n"
        )
    time_rows = (
        "".join(
            f"<tr><td>{esc(name)}</td><td>{seconds:.1f}</td><td>{100 * share:.1f}%</td></tr>"
            for name, seconds, share in _time_table(report)
        )
        or "<tr><td colspan=3>-</td></tr>"
    )
    steering = "".join(
        f"<tr><td>{item['masked']}</td><td>{item.get('probes', 0)}</td><td>{esc(item['title'][:200])}</td>"
        f"<td><code>{esc(', '.join(f'{k}={v}' for k, v in sorted(item['conditions'].items())))}"
        f"</code></td></tr>"
        for item in report.get("steering", [])
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shardfuzz run report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%;vertical-align:top}}
table.heat td{{font-size:75%;text-align:center;min-width:3em}}table.heat th{{text-align:left;font-size:80%}}</style></head><body>
<h1>shardfuzz run</h1>
<p>{esc(headline(report))}</p>
<p>world size {report.get("world_size")}, target <code>{esc(str(report.get("target")))}</code>,
seed {report.get("seed")} (repeat it with <code>--seed {report.get("seed")}</code>), database <code>{esc(str(report.get("database") or "none"))}</code></p>
{campaigns}{plots}
<h2>New failures</h2>
<table><tr><th>class</th><th>summary</th><th>hits</th><th>shrunk</th><th>reproducer</th></tr>{rows}</table>
<h2>Known torch bugs hit</h2>
<table><tr><th>hits</th><th>seconds</th><th>bug</th></tr>{known}</table>
<h2>Where the time went</h2>
<table><tr><th>what</th><th>seconds</th><th>share of the wall time</th></tr>{time_rows}</table>
<h2>Steered away from known bugs</h2>
<p>{report.get("masked_draws", 0)} draws masked: once a known bug has been hit, cases with the fewest dimension
values its hits share that set them apart from the other cases run are no longer drawn (a bug that leaves ranks
stuck, from the first draw where its corpus entry says when); {report.get("probe_draws", 0)} such draws ran anyway
as probes of their masks (<code>--no-steer</code> turns steering off).</p>
<table><tr><th>masked</th><th>probes</th><th>known bug</th><th>conditions</th></tr>
{steering or "<tr><td colspan=4>None.</td></tr>"}</table>
<h2>Coverage: cases per dimension value</h2>
{_heat_table(report)}
<h3>By dimension</h3>
<table><tr><th>dimension</th><th>cases per value</th><th>not reached</th></tr>{coverage}</table>
</body></html>
"""


#: file name in ``--report-dir`` -> renderer
FORMATS = {"summary.md": markdown, "junit.xml": junit_xml, "report.html": html_page}
