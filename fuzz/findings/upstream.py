"""What a user hands upstream: an issue text for one corpus entry (``shardfuzz report-bug``).

``issue_text`` writes the markdown of a bug report: a one-line title, what was
expected and what happened (the oracle's words with the first differing key,
index and values, or the error and its root traceback), the standalone script
inline, the environment, the versions seen, when it happens (the entry's
explanation) and where it stands upstream (its report and fix apart from related threads).
"""

from __future__ import annotations

import platform

from shardfuzz.findings.corpus import Entry
from shardfuzz.findings.describe import describe
from shardfuzz.findings.known_table import torch_range

__all__ = ["PROMISES", "environment", "issue_text"]

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
        f"torch {', '.join(seen)}" + (f" (known range: {torch_range(entry.known)})" if entry.known else ""),
        "",
    ]
    if entry.explanation is not None:
        lines += ["## When it happens", "", *_conditions(entry.explanation), ""]
    lines += _upstream_section(entry)
    return "\n".join(lines)


def _conditions(explanation) -> list[str]:
    """The explanation as a bug report says it: what the failure needs, what it does not, how far it reaches."""
    needs = ", ".join(f"`{label}={value}`" for label, value in sorted(explanation.necessary.items()))
    lines = [
        f"Measured by running the case's {len(explanation.neighbours)} neighbours, one dimension changed at a time "
        f"(torch {explanation.torch or '?'}, {explanation.date or '?'}).",
        "",
        f"- It needs: {needs or 'no single value (every change tried kept a failure)'}.",
        f"- It does not depend on: {', '.join(f'`{d}`' for d in explanation.free) or 'nothing measured'}.",
    ]
    if explanation.bites_realistic_setups is not None:
        lines.append(f"- Reach: it {explanation.reach()}.")
    if not explanation.complete:
        lines.append("- The measurement was cut short: `shardfuzz explain ENTRY` finishes it.")
    return lines


def _upstream_section(entry: Entry) -> list[str]:
    """Where the bug stands upstream: its report and fix, then related threads, never one for the other."""
    known = entry.known
    if known is None:
        return []
    if known.upstream is None:
        return ["## Related", "", known.link, ""] if known.link else []
    lines = []
    for relation, heading in (("reported", "Reported as"), ("fixed-by", "Fixed by")):
        for link in known.upstream.of(relation):
            release = f" ({link.release})" if link.release else ""
            lines += [f"## {heading}", "", f"{link.url}{release}: {link.note}".rstrip(": "), ""]
    related = known.upstream.of("related")
    if related:
        lines += ["## Related (not this bug's report)", ""]
        lines += [f"- {link.url}: {link.note}".rstrip(": ") for link in related] + [""]
    return lines
