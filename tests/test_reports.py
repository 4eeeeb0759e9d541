"""Reports from a campaign result: JSON, markdown, JUnit XML, HTML; several workers' merged; databases opened."""

import json
import xml.etree.ElementTree as ET

import pytest

from shardfuzz.findings.corpus import KnownBugs
from shardfuzz.findings.render import html_page, junit_xml, markdown
from shardfuzz.findings.run_report import campaign_report, merge_reports, read_report, write_atomic
from shardfuzz.search.campaign import CampaignSettings, FunctionHost, run_campaign
from shardfuzz.search.database import DatabaseError, open_database
from shardfuzz.strategies import offered_values
from shardfuzz.verdict import Mismatch, RankError, Verdict


def _verdict(case) -> Verdict:
    if case.steps >= 2:
        return Verdict("mismatch", (Mismatch("state", "model.0.weight", 1, "values differ"),))
    if case.param_groups == 2:
        return Verdict("error", errors=(RankError(0, "load", "KeyError", "'param_groups.1'"),))
    return Verdict("pass")


@pytest.fixture(scope="module")
def report():
    result = run_campaign(FunctionHost(_verdict), CampaignSettings(budget=60, seed=5, max_world_size=2, max_cases=120))
    known = KnownBugs()
    offered = {d: sorted(v) for d, v in offered_values(max_world_size=2).items()}
    return campaign_report(
        result,
        meta={"torch": "2.x", "world_size": 2, "target": "t", "seed": 5, "budget_seconds": 60, "database": None},
        known=known,
        corpus_files={},
        offered=offered,
    )


def test_json_report_has_findings_by_class_and_a_timeline(report):
    assert report["cases_run"] >= 120
    assert report["findings_by_class"] == {"silent corruption": 1, "loud error": 1}
    assert report["timeline"][-1]["cases"] == report["cases_run"]
    json.dumps(report)  # plain data


def test_junit_has_one_failing_testcase_per_finding(report):
    suite = ET.fromstring(junit_xml(report))
    failing = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert len(failing) == len(report["failures"]) == int(suite.get("failures")) == 2
    assert {case.get("classname") for case in failing} == {"shardfuzz.silent_corruption", "shardfuzz.loud_error"}


def test_markdown_lists_findings_and_coverage(report):
    text = markdown(report)
    assert "## New failures" in text and "silent corruption" in text and "loud error" in text
    assert "| save_engine |" in text


def test_html_is_self_contained_with_three_plots(report):
    pytest.importorskip("matplotlib", reason="the HTML report's plots need matplotlib (the 'report' extra)")
    page = html_page(report)
    assert page.count("<svg") == 3
    assert "src=" not in page and "<link" not in page and "@import" not in page  # nothing fetched from elsewhere
    # One coverage curve (not one line per dimension under one legend), a dimension x value table, the
    # time split, and the seed to repeat the run with.
    assert "Coverage: share of the" in page and page.count('class="heat"') >= sum(
        len(set(v) | set(report["coverage"].get(d, {}))) for d, v in report["coverage_offered"].items()
    )
    assert "Where the time went" in page and "known repeats" in page
    assert "--seed 5" in page


def test_the_report_command_renders_any_report_json_afterwards(report, tmp_path, capsys):
    from shardfuzz.cli import main

    path = tmp_path / "report.json"
    write_atomic(path, json.dumps(report))
    assert main(["report", str(path), "--markdown"]) == 0
    assert "## New failures" in capsys.readouterr().out
    assert main(["report", str(path), "--junit", "-o", str(tmp_path / "j.xml")]) == 0
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "2"
    (tmp_path / "bad.json").write_text("{}")
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_merged_reports_add_counts_and_unite_findings(report):
    second = dict(report, worker=1)
    merged = merge_reports([dict(report, worker=0), second], meta={"world_size": 2})
    assert merged["cases_run"] == 2 * report["cases_run"]
    assert len(merged["failures"]) == len(report["failures"])
    assert all(f["hits"] == 2 * g["hits"] for f, g in zip(merged["failures"], report["failures"]))
    assert merged["timeline"][-1]["cases"] == 2 * report["cases_run"]


def test_a_merged_report_has_a_row_per_campaign_in_every_format(report):
    from shardfuzz.findings.render import campaign_rows, html_page, junit_xml, markdown

    restarted = dict(report, worker=1, attempt=1, node="node-b")
    merged = merge_reports([dict(report, worker=0, node="node-a"), restarted], meta={"world_size": 2})
    rows = campaign_rows(merged)
    assert [row[0] for row in rows] == ["campaign 0", "campaign 1, attempt 1"]
    assert [row[3] for row in rows] == ["node-a", "node-b"]
    assert "| campaign 1, attempt 1 |" in markdown(merged) and "<td>campaign 1, attempt 1</td>" in html_page(merged)
    names = [case.get("name") for case in ET.fromstring(junit_xml(merged).split("\n", 1)[1])]
    assert "campaign 1, attempt 1" in names
    assert campaign_rows(merge_reports([report], meta={})) == []  # one campaign: no table


def test_report_written_atomically_reads_back(tmp_path, report):
    path = tmp_path / "deep" / "r.json"
    write_atomic(path, json.dumps(report))
    assert read_report(path)["cases_run"] == report["cases_run"]
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json: not a readable shardfuzz report"):
        read_report(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ftp://host/db", "use a directory path, redis://"),
        ("redis://127.0.0.1:1/0", "cannot reach the Redis server"),
        ("FILE", "is a file, not a directory"),
    ],
)
def test_bad_database_specs_are_named(spec, message, tmp_path):
    pytest.importorskip("redis", reason="the redis client (the 'redis' extra)")
    if spec == "FILE":
        spec = str(tmp_path / "f")
        (tmp_path / "f").write_text("")
    with pytest.raises(DatabaseError, match=message):
        open_database(spec)


def test_none_and_read_only_databases(tmp_path):
    from hypothesis.database import ReadOnlyDatabase

    assert open_database("none") is None
    shared = open_database(str(tmp_path / "theirs"))
    shared.save(b"k", b"v")
    replay = open_database("none", replay_from=str(tmp_path / "theirs"))
    assert isinstance(replay, ReadOnlyDatabase) and list(replay.fetch(b"k")) == [b"v"]
    replay.save(b"k", b"w")
    assert list(shared.fetch(b"k")) == [b"v"]  # read-only: nothing written into theirs
    both = open_database(str(tmp_path / "mine"), replay_from=str(tmp_path / "theirs"))
    both.save(b"k", b"mine")
    assert set(both.fetch(b"k")) == {b"v", b"mine"} and list(shared.fetch(b"k")) == [b"v"]
