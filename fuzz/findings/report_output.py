"""A run's reports written out: the JSON file and every other format in a folder, and the summary a terminal shows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["print_summary", "write_reports"]


def write_reports(report: dict, *, json_path: Path | None = None, directory: Path | None = None) -> None:
    """The JSON report at ``json_path``; in ``directory``, report.json and every other format."""
    from shardfuzz.findings.render import FORMATS
    from shardfuzz.findings.run_report import write_atomic

    text = json.dumps(report, indent=2) + "\n"
    if json_path is not None:
        write_atomic(json_path, text)
    if directory is not None:
        write_atomic(Path(directory) / "report.json", text)
        for name, render in FORMATS.items():
            try:
                write_atomic(Path(directory) / name, render(report))
            except RuntimeError as exc:  # the HTML report without matplotlib: say so, keep the others
                print(f"shardfuzz: {name} not written: {exc}", file=sys.stderr)


def print_summary(report: dict) -> None:
    from shardfuzz.findings.render import headline

    print(f"shardfuzz: {headline(report)}")
    for name, why in report.get("across_torches", {}).get("left_out", {}).items():
        print(f"  {name}: {why}")
    if report.get("seed") is not None:
        print(f"  seed {report['seed']} (repeat the draws with --seed {report['seed']})")
    for failure in report["failures"]:
        print(f"  NEW   [{failure['class']}] {failure['summary'][:200]}")
        if failure["corpus_file"]:
            print(f"        reproducer: {failure['corpus_file']}")
    for known in report["known_failures"]:
        print(f"  known x{known['hits']}: {known['title'][:150]}")
