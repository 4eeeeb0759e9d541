"""``corpus/README.md``: the corpus's known bugs, counted as bugs (root causes) apart from entries (findings).

``shardfuzz known-bugs`` writes it; a test keeps it current. The first table has one row per bug (its kind,
its entries, whether it reaches realistic setups, where it stands upstream), the second one row per entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shardfuzz.findings.bugs import Bug, bugs_of
from shardfuzz.findings.corpus import Entry
from shardfuzz.findings.describe import describe
from shardfuzz.findings.explanation import EDGES, FAILS_OTHERWISE_AT_REALISTIC, PASSES_AT_REALISTIC
from shardfuzz.findings.triage import KINDS
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import TRIAGE_CLASSES

__all__ = ["known_bug_table", "reach", "torch_range", "upstream_cell"]

_INTRO = (
    "Generated from the entries' `known` blocks by `shardfuzz known-bugs -o corpus/README.md`; "
    "do not edit by hand (a test checks it is current). An *entry* is one shrunk finding; a *bug* is the root "
    "cause its entries share (`known.bug`): one bug is often found through several optimizers, storage paths "
    "or sides. Only findings of kind `bug` are counted as bugs; a documented `limitation`, a use that is "
    "`not-promised` and an `incompatibility` across versions are listed apart. *Reach* is measured "
    "(`shardfuzz explain`): whether the same failure shows on the nearest realistic case (every split even with a "
    "shard on every rank, widths at least 8x the largest mesh dimension, 2+ layers, default options), whether "
    "it passed there or failed another way (then whether this bug is there too is not known: the other failure "
    "came first), and the mildest edge that alone brings the failure back to it (an uneven split, an empty shard, a width below the "
    "shards, one element), else the edges the shrunk case stands on. *Upstream* says how each link relates: the bug's own report, the PR that "
    "fixed it, or a related thread that is not this bug.\n\n"
    "Each entry is replayed by the test suite: a strict xfail on a torch inside its range, so an upstream fix "
    "shows up as an unexpected pass. A range's upper end says what it is: `(fixed)`, the first release without "
    "the bug (above it the case must pass), or `(last checked)`, the newest release checked (above it the bug is "
    "presumed still there: a failure says to extend the range, a pass to check for a fix; neither fails the "
    "suite). An entry met through a framework's checkpoint API (`target`) also names the framework versions it is "
    "known for and whether the bug lies in the framework or in torch underneath (`in`; the entry's `evidence` "
    "says why). An entry saved under one torch and loaded under another gives a range for each (`save torch -> "
    "load torch`); `tox -e crossversion` replays it (docs/cross-version.md). `on CUDA` says what the entry did "
    "when replayed with its sides moved to a GPU (`shardfuzz replay --device cuda --on-cuda --record`): CUDA "
    "too, CPU only (it passes there and still fails on CPU ranks of the same machine and torch), or why it was "
    "not checked."
)


def reach(entry: Entry) -> str:
    """Whether the entry's failure shows at realistic widths, as measured: one cell."""
    explanation = entry.explanation
    if explanation is None and entry.torches is not None:
        return "not measured here: explaining it needs both torches (`shardfuzz explain --save-python ... --load-python ...`)"
    if explanation is None and "cuda" in (entry.case.save.device, entry.case.load.device):
        return "not measured here: its case runs a side on CUDA (`shardfuzz explain` on a machine with a GPU)"
    if explanation is None or explanation.bites_realistic_setups is None:
        return "not measured" if explanation is None or not explanation.complete else "realistic case not run here"
    if explanation.bites_realistic_setups:
        return "realistic widths too"
    at = explanation.at_realistic_widths
    needed = explanation.edge_needed
    if needed is not None:
        return f"{at}; needs {EDGES[needed.dimension]}"
    return at + (f" (shrunk case: {', '.join(EDGES[edge] for edge in explanation.edges)})" if explanation.edges else "")


def upstream_cell(entry: Entry) -> str:
    known = entry.known
    if known is None:
        return ""
    if known.upstream is not None:
        return known.upstream.summary()
    return f"{known.link} (relation not triaged)" if known.link else "none found (search not recorded)"


def _bug_reach(bug: Bug) -> str:
    cells = {reach(entry) for _, entry in bug.entries}
    if "realistic widths too" in cells:
        return "realistic widths too"
    measured = sorted(cell for cell in cells if cell.startswith(_NOT_THE_SAME))
    return "; ".join(measured) if measured else "not measured"


_NOT_THE_SAME = (PASSES_AT_REALISTIC, FAILS_OTHERWISE_AT_REALISTIC)  # ``Explanation.at_realistic_widths``


def _counts(bugs: list[Bug], entries: int) -> str:
    by_kind = {kind: [bug for bug in bugs if bug.kind == kind] for kind in KINDS}
    real = by_kind["bug"]
    reaches = [_bug_reach(bug) for bug in real]
    realistic = reaches.count("realistic widths too")
    measured = len(reaches) - reaches.count("not measured")
    one_edge = sum(1 for cell in reaches if cell != "realistic widths too" and "; needs " in cell)
    passes = sum(1 for cell in reaches if cell.startswith(PASSES_AT_REALISTIC))
    others = ", ".join(f"{len(by_kind[kind])} {kind}" for kind in KINDS[1:] if by_kind[kind])
    return (
        f"**{len(real)} bugs in {sum(len(bug.entries) for bug in real)} entries** "
        f"({entries} entries in all{'; not counted as bugs: ' + others if others else ''}). "
        f"Of the bugs, {realistic} fail the same way at realistic widths, {passes} pass there and "
        f"{measured - realistic - passes} fail there another way (which comes first, so whether the bug is there too "
        f"is not known); of those {measured - realistic}, {one_edge} fail this way again with one edge put back (the "
        f"mildest is named), the others only on the shrunk case's; "
        f"{len(real) - measured} {'is' if len(real) - measured == 1 else 'are'} not measured yet."
    )


def known_bug_table(entries: Iterable[tuple[Path, Entry]]) -> str:
    """``corpus/README.md``: the bugs, then every entry with a ``known`` block, by class (worst first) then name."""
    order = list(TRIAGE_CLASSES)
    known = sorted(
        ((path, entry) for path, entry in entries if entry.known is not None),
        key=lambda item: (order.index(item[1].status), item[0].name),
    )
    bugs = bugs_of(known)
    bug_of = {path.stem: bug.name for bug in bugs for path, _ in bug.entries}
    rows = [
        "# Known bugs in this corpus",
        "",
        _INTRO,
        "",
        _counts(bugs, len(known)),
        "",
        "## Bugs",
        "",
        "| bug | kind | entries | root cause | reach | upstream |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for bug in sorted(bugs, key=lambda bug: (KINDS.index(bug.kind), -len(bug.entries), bug.name)):
        first = bug.entries[0][1]
        rows.append(
            f"| `{bug.name}` | {bug.kind} | {', '.join(f'`{path.stem[:8]}`' for path, _ in bug.entries)} | "
            f"{_cell('; '.join(bug.root_causes))} | {_cell(_bug_reach(bug))} | {_cell(upstream_cell(first))} |"
        )
    rows += [
        "",
        "## Entries",
        "",
        "| entry | bug | class | what | minimal case | target | in | torch range | framework range | seen on | "
        "on CUDA | reach | upstream |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path, entry in known:
        what = entry.title.split("] ", 1)[-1]
        block = entry.known
        assert block is not None  # ``known`` holds the entries with a known block
        target = "dcp" if entry.target == DEFAULT_TARGET else entry.target
        frameworks = ", ".join(f"{name} {_range(block, name)}" for name in block.frameworks) or "-"
        rows.append(
            f"| `{path.stem}` | `{bug_of[path.stem]}` | {entry.triage} | {_cell(what)} | {_cell(describe(entry.case))} "
            f"| {_cell(target)} | {block.layer} | {torch_range(block)} | {_cell(frameworks)} | "
            f"{', '.join(block.seen) or '-'} | {_cell(entry.cuda.verdict if entry.cuda else 'not checked')} | "
            f"{_cell(reach(entry))} | {_cell(upstream_cell(entry))} |"
        )
    return "\n".join(rows) + "\n"


def torch_range(block) -> str:
    """``>=2.10``, or ``<2.5`` -> ``>=2.7`` for a bug saved under one torch and loaded under another."""
    return f"{_range(block, 'save_torch')} -> {_range(block, 'torch')}" if block.save_torch else _range(block, "torch")


def _range(block, name: str) -> str:
    """One range of a known block, with what its upper end means: ``<2.14`` (fixed), ``<=1.15.0`` (last checked)."""
    meaning = {"fixed-in": " (fixed)", "last-checked": " (last checked)"}.get(block.upper.get(name, ""), "")
    return f"`{block.ranges()[name]}`{meaning}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
