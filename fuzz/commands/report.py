"""``shardfuzz report``: render a run's JSON report as HTML, markdown or JUnit XML."""

from __future__ import annotations

import argparse
import sys

from shardfuzz.commands._common import emit

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    from shardfuzz.findings.render import html_page, junit_xml, markdown
    from shardfuzz.findings.run_report import read_report

    render = {"html": html_page, "markdown": markdown, "junit": junit_xml}[args.format or "html"]
    try:
        text = render(read_report(args.report))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        what = f"{args.report}: not a complete run report (missing {exc})" if isinstance(exc, KeyError) else str(exc)
        print(f"shardfuzz report: {what}", file=sys.stderr)
        return 2
    emit(text, args.output)
    return 0
