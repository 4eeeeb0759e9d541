"""What a user hands upstream: an issue text for one corpus entry, and the table of known bugs.

``issue_text`` writes the markdown of a bug report: a one-line title, what was
expected and what happened (the oracle's words with the first differing key,
index and values, or the error and its root traceback), the standalone script
inline, the environment and the versions seen. ``known_bug_table`` renders every
known entry of a corpus as the table ``corpus/README.md`` holds (``shardfuzz
known-bugs`` writes it; a test keeps it current).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

from shardfuzz.findings.corpus import Entry
from shardfuzz.findings.describe import describe
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import TRIAGE_CLASSES

__all__ = ["PROMISES", "environment", "issue_text", "known_bug_table"]

#: What each oracle, and each other class of failure, says should have happened.
PROMISES = {
    "complete-state": "After the load, every parameter, persistent buffer, optimizer-state value and "
    "param-group hyperparameter equals the saved one, bit for bit, with no key missing or extra.",
    "replica-consistency": "After the load, every rank holding a copy of a replicated value (DDP's parameters, "
    "buffers, step counters, HSDP replicas) holds the same bits.",
    "continuation": "Two more optimizer steps after the load give what two more steps on the saved model give.",
    "layout": "An FSDP2 model keeps every parameter a DTensor on its mesh, with its placements, global shape "
    "and dtype, after the load.",
    "api-parity": "Two torch APIs asked for the same state return the same values.",
    "full-offload": "A full state dict with cpu_offload puts every value on rank 0, full-shaped, on the CPU, "
    "and nothing on the other ranks.",
    "loud-incompatible-load": "Loading into a model of another shape raises an error.",
    "error": "Saving and loading complete without raising.",
    "crash": "No rank process dies.",
    "hang": "Every rank finishes: none waits forever in a collective its peers never join.",
}


def environment() -> dict[str, str]:
    """The essentials torch's own ``collect_env`` reports, and the process-group backend used here."""
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "backend": "gloo (CPU ranks)",
    }
    try:
        from torch.utils.collect_env import get_env_info

        info = get_env_info()
        env.update(
            {
                "os": info.os or env["os"],
                "cuda (torch built with)": str(info.cuda_compiled_version),
                "cuda available": str(info.is_cuda_available),
                "gcc": str(info.gcc_version),
            }
        )
    except Exception as exc:
        env["collect_env"] = f"unavailable: {type(exc).__name__}: {exc}"
    return env


def issue_text(entry: Entry, *, script: str, env: dict[str, str] | None = None) -> str:
    """The markdown of an upstream bug report for ``entry``, with ``script`` (its exported reproducer) inline."""
    env = environment() if env is None else env
    cause = entry.cause
    promise_key = cause.name if cause is not None and cause.kind == "oracle" else entry.status
    title = entry.title.split("] ", 1)[-1]
    lines = [
        f"# {title}",
        "",
        f"Found by shardfuzz (a property-based fuzzer for sharded-checkpoint round-trips): **{entry.triage}**.",
        "",
        "## What was expected",
        "",
        PROMISES.get(promise_key, PROMISES["error"]),
        "",
        "## What happened",
        "",
    ]
    if cause is not None:
        where = f" in phase `{cause.phase}`" if cause.phase else ""
        ranks = (
            f" on rank{'s' if len(cause.ranks) > 1 else ''} {', '.join(map(str, cause.ranks))}" if cause.ranks else ""
        )
        lines += [f"`{cause.name}`{where}{ranks}:", "", "```", cause.message.strip(), "```", ""]
    else:
        lines += ["```", entry.summary, "```", ""]
    if entry.diagnostics.strip():
        kind = "Root traceback" if entry.status == "error" else "The ranks' last output and stacks"
        lines += [
            f"<details><summary>{kind}</summary>",
            "",
            "```",
            entry.diagnostics.strip()[-6000:],
            "```",
            "",
            "</details>",
            "",
        ]
    how = (
        f"Needs only torch. `python repro.py` (it starts {entry.replay_world_size} gloo rank(s) itself) or "
        f"`torchrun --standalone --nproc-per-node {entry.replay_world_size} repro.py`; it prints `REPRODUCED` "
        f"and exits 1 when the failure shows."
    )
    if entry.torches is not None:
        save, load = entry.torches
        how = (
            f"Saved under torch {save}, loaded under torch {load}: run `python repro.py --phase save --dir DIR` "
            f"under the first, then `python repro.py --phase load --dir DIR` under the second (each starts "
            f"{entry.replay_world_size} gloo rank(s)); the load prints `REPRODUCED` and exits 1 when the failure "
            f"shows. Under each torch alone: "
            + "; ".join(f"{version} {outcome}" for version, outcome in entry.alone.items())
            + "."
        )
    lines += ["## The case", "", describe(entry.case), "", "## Minimal reproducer", "", how, ""]
    lines += [
        "```python",
        script.rstrip(),
        "```",
        "",
        "## Environment",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    seen = (
        list(entry.known.seen) if entry.known is not None and entry.known.seen else [entry.versions.get("torch", "?")]
    )
    lines += [
        f"- world size: {entry.replay_world_size}",
        "",
        "## Versions seen",
        "",
        f"torch {', '.join(seen)}" + (f" (known range: {_torch_range(entry.known)})" if entry.known else ""),
        "",
    ]
    if entry.known is not None and entry.known.link:
        lines += ["## Related", "", entry.known.link, ""]
    return "\n".join(lines)


def known_bug_table(entries: Iterable[tuple[Path, Entry]]) -> str:
    """``corpus/README.md``: every entry with a ``known`` block, by class (worst first) then file name."""
    order = list(TRIAGE_CLASSES)
    known = sorted(
        ((path, entry) for path, entry in entries if entry.known is not None),
        key=lambda item: (order.index(item[1].status), item[0].name),
    )
    rows = [
        "# Known bugs in this corpus",
        "",
        "Generated from the entries' `known` blocks by `shardfuzz known-bugs -o corpus/README.md`; "
        "do not edit by hand (a test checks it is current). Each entry is replayed by the test suite: a "
        "strict xfail on a torch inside its range, so an upstream fix shows up as an unexpected pass. A range's "
        "upper end says what it is: `(fixed)`, the first release without the bug (above it the case must pass), "
        "or `(last checked)`, the newest release checked (above it the bug is presumed still there: a failure "
        "says to extend the range, a pass to check for a fix; neither fails the suite). An entry "
        "met through a framework's checkpoint API (`target`) also names the framework versions it is known "
        "for (the strict xfail holds only where that framework is installed in range) and whether the bug "
        "lies in the framework or in torch underneath (`in`; the entry's `evidence` says why). An entry saved "
        "under one torch and loaded under another gives a range for each (`save torch -> load torch`); "
        "`tox -e crossversion` replays it (docs/cross-version.md). `on CUDA` says what the entry did when "
        "replayed with its sides moved to a GPU (`shardfuzz replay --device cuda --on-cuda --record`): CUDA too, "
        "CPU only (it passes there and still fails on CPU ranks of the same machine and torch), or why it was not "
        "checked.",
        "",
        f"{len(known)} known bugs.",
        "",
        "| entry | class | what | minimal case | target | in | torch range | framework range | seen on | on CUDA "
        "| link |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path, entry in known:
        what = entry.title.split("] ", 1)[-1]
        block = entry.known
        assert block is not None  # ``known`` holds the entries with a known block
        target = "dcp" if entry.target == DEFAULT_TARGET else entry.target
        frameworks = ", ".join(f"{name} {_range(block, name)}" for name in block.frameworks) or "-"
        rows.append(
            f"| `{path.stem}` | {entry.triage} | {_cell(what)} | {_cell(describe(entry.case))} | {_cell(target)} | "
            f"{block.layer} | {_torch_range(block)} | {_cell(frameworks)} | {', '.join(block.seen) or '-'} | "
            f"{_cell(entry.cuda.verdict if entry.cuda else 'not checked')} | {_cell(block.link or 'none found')} |"
        )
    return "\n".join(rows) + "\n"


def _torch_range(block) -> str:
    """``>=2.10``, or ``<2.5`` -> ``>=2.7`` for a bug saved under one torch and loaded under another."""
    return f"{_range(block, 'save_torch')} -> {_range(block, 'torch')}" if block.save_torch else _range(block, "torch")


def _range(block, name: str) -> str:
    """One range of a known block, with what its upper end means: ``<2.14`` (fixed), ``<=1.15.0`` (last checked)."""
    meaning = {"fixed-in": " (fixed)", "last-checked": " (last checked)"}.get(block.upper.get(name, ""), "")
    return f"`{block.ranges()[name]}`{meaning}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
