"""A run's JSON report rendered for people and CI: markdown, JUnit XML, self-contained HTML.

Each function takes the report dict (``report.campaign_report``) and returns
text. The HTML page embeds its plots as inline SVG drawn by matplotlib (the
``report`` extra), so it is one file with nothing to fetch: mail it, attach it
to a CI run, open it the morning after.
"""

from __future__ import annotations

import html as html_escape
import io
import json
import xml.etree.ElementTree as ET

__all__ = ["markdown", "junit_xml", "html_page", "headline", "FORMATS"]


def headline(report: dict) -> str:
    rate = report["cases_run"] / max(report["wall_seconds"], 1e-9)
    known = sum(k["hits"] for k in report.get("known_failures", []))
    stopped = f", stopped by {report['stopped']}" if report.get("stopped") not in ("", "budget", None) else ""
    return (f"{report['cases_run']} cases in {report['wall_seconds']:.0f} s ({rate:.1f}/s) on torch "
            f"{report.get('torch', '?')}: {report['passed']} passed, {len(report['failures'])} new failure(s), "
            f"{known} hit(s) of {len(report.get('known_failures', []))} known bug(s){stopped}")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    lines = ["# shardfuzz run", "", headline(report), ""]
    lines += [f"- world size {report.get('world_size')}, target `{report.get('target')}`, seed {report.get('seed')}, "
              f"budget {report.get('budget_seconds')} s, database `{report.get('database') or 'none'}`"
              f" ({report.get('replayed_from_database', 0)} example(s) replayed)", ""]
    lines += ["## New failures", ""]
    if report["failures"]:
        lines += ["| class | summary | hits | shrunk | from database | found after | reproducer |",
                  "|---|---|---|---|---|---|---|"]
        for f in report["failures"]:
            lines.append(f"| {f['class']} | {_cell(f['summary'][:200])} | {f['hits']} | "
                         f"{'yes' if f.get('shrunk', True) else 'partly'} | {'yes' if f.get('from_database') else 'no'} | "
                         f"{f.get('seconds_to_find', 0):.0f} s | `{f.get('corpus_file') or '-'}` |")
    else:
        lines.append("None.")
    lines += ["", "## Known torch bugs hit", ""]
    if report.get("known_failures"):
        lines += ["| hits | bug |", "|---|---|"]
        lines += [f"| {k['hits']} | {_cell(k['title'][:200])} |" for k in report["known_failures"]]
    else:
        lines.append("None.")
    if report.get("unsupported"):
        lines += ["", "## Documented-unsupported combinations", "", "| hits | rule |", "|---|---|"]
        lines += [f"| {u['hits']} | {_cell(u['signature'][:200])} |" for u in report["unsupported"]]
    slow = report.get("slowest_recent_case") or {}
    if slow.get("case"):
        lines += ["", f"Slowest of the last 100 cases: {slow['seconds']:.2f} s, {slow['case']}"]
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
        case = ET.SubElement(suite, "testcase", classname=f"shardfuzz.{f['class'].replace(' ', '_')}",
                             name=f["signature"][:200])
        failure = ET.SubElement(case, "failure", message=f["summary"][:500], type=f["status"])
        failure.text = f["summary"]
        out = ET.SubElement(case, "system-out")
        out.text = (f"reproducer: {f.get('corpus_file') or '-'}\nhits: {f['hits']}\n"
                    f"case: {json.dumps(f['case'], sort_keys=True)}")
        cases += 1
    for k in report.get("known_failures", []):
        case = ET.SubElement(suite, "testcase", classname="shardfuzz.known", name=k["signature"][:200])
        ET.SubElement(case, "skipped", message=f"known torch bug, hit {k['hits']} time(s): {k['title'][:300]}")
        cases += 1
    run = ET.SubElement(suite, "testcase", classname="shardfuzz.campaign", name="campaign",
                        time=f"{report['wall_seconds']:.3f}")
    out = ET.SubElement(run, "system-out")
    out.text = headline(report)
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
        raise RuntimeError("the HTML report draws its plots with matplotlib: "
                           "pip install 'shardfuzz[report]' (or matplotlib)") from exc
    timeline = report.get("timeline", [])
    t = [p["t"] / 60 for p in timeline]
    figures = []

    def svg(fig) -> str:
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
        text = buffer.getvalue()
        return text[text.find("<svg"):]

    fig, ax = plt.subplots(figsize=(8, 3))
    rates = [(b["cases"] - a["cases"]) / max(b["t"] - a["t"], 1e-9) for a, b in zip(timeline, timeline[1:])]
    ax.plot(t[1:], rates, drawstyle="steps-post")
    ax.set_xlabel("minutes")
    ax.set_ylabel("cases / s")
    figures.append(("Cases per second", svg(fig)))

    fig, ax = plt.subplots(figsize=(8, 4))
    offered = report.get("coverage_offered", {})
    for dim in sorted({d for p in timeline for d in p.get("coverage", {})}):
        total = len(offered.get(dim, [])) or max(p.get("coverage", {}).get(dim, 0) for p in timeline) or 1
        ax.plot(t, [p.get("coverage", {}).get(dim, 0) / total for p in timeline], linewidth=1, label=dim)
    ax.set_xlabel("minutes")
    ax.set_ylabel("share of offered values reached")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=6, ncol=3, loc="lower right")
    figures.append(("Coverage growth per dimension", svg(fig)))

    fig, ax = plt.subplots(figsize=(8, 3))
    classes = sorted({c for p in timeline for c in p.get("findings", {})})
    for triage in classes:
        ax.plot(t, [p.get("findings", {}).get(triage, 0) for p in timeline], drawstyle="steps-post", label=triage)
    ax.plot(t, [p.get("known_hits", 0) for p in timeline], drawstyle="steps-post", linestyle=":",
            label="known bug hits")
    ax.set_xlabel("minutes")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    figures.append(("Findings over time by class", svg(fig)))
    return figures


def html_page(report: dict) -> str:
    """A self-contained HTML page: headline, plots, findings, known bugs, coverage."""
    esc = html_escape.escape
    rows = "".join(
        f"<tr><td>{esc(f['class'])}</td><td>{esc(f['summary'][:300])}</td><td>{f['hits']}</td>"
        f"<td>{'yes' if f.get('shrunk', True) else 'partly'}</td><td><code>{esc(f.get('corpus_file') or '-')}</code></td></tr>"
        for f in report["failures"]) or "<tr><td colspan=5>None.</td></tr>"
    known = "".join(f"<tr><td>{k['hits']}</td><td>{esc(k['title'][:300])}</td></tr>"
                    for k in report.get("known_failures", [])) or "<tr><td colspan=2>None.</td></tr>"
    offered = report.get("coverage_offered", {})
    coverage = "".join(
        f"<tr><td>{esc(dim)}</td><td>{esc(', '.join(f'{v}: {n}' for v, n in values.items()))}</td>"
        f"<td>{esc(', '.join(sorted(set(offered.get(dim, [])) - set(values))) or '-')}</td></tr>"
        for dim, values in report.get("coverage", {}).items())
    plots = "".join(f"<h2>{esc(title)}</h2>\n{svg}\n" for title, svg in _plots(report))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shardfuzz run report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%;vertical-align:top}}</style></head><body>
<h1>shardfuzz run</h1>
<p>{esc(headline(report))}</p>
<p>world size {report.get('world_size')}, target <code>{esc(str(report.get('target')))}</code>,
seed {report.get('seed')}, database <code>{esc(str(report.get('database') or 'none'))}</code></p>
{plots}
<h2>New failures</h2>
<table><tr><th>class</th><th>summary</th><th>hits</th><th>shrunk</th><th>reproducer</th></tr>{rows}</table>
<h2>Known torch bugs hit</h2>
<table><tr><th>hits</th><th>bug</th></tr>{known}</table>
<h2>Coverage</h2>
<table><tr><th>dimension</th><th>cases per value</th><th>not reached</th></tr>{coverage}</table>
</body></html>
"""


#: file name in ``--report-dir`` -> renderer
FORMATS = {"summary.md": markdown, "junit.xml": junit_xml, "report.html": html_page}
