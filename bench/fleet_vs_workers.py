"""Throughput of a local Ray fleet of N campaigns against ``shardfuzz run --workers N``, side by side.

Each round runs both, one after the other (which first alternates by round), with the same seed, budget,
world size and options, each on a fresh copy of the repository's corpus (so torch's known bugs stay known
and one run's findings do not become the other's known bugs) and a fresh example database. Reported: the
cases each ran in the budget (from its merged JSON report), cases per second of budget, and the wall time of
the whole command (Ray's start included).

    python bench/fleet_vs_workers.py --budget 120 --campaigns 2 --world-size 2 --rounds 2 --seed 1
    python bench/fleet_vs_workers.py --max-cases 60 --campaigns 2 --world-size 2 --rounds 2 --seed 1

With ``--max-cases`` each campaign stops after that many cases (the budget only a ceiling) and what counts is
the command's wall time: a seed's draws depend on what its earlier cases did and when, so two runs of one seed
in a budget may run very different cases (a campaign ran 41 cases in one 120 s run and 122 in another); a fixed
count of the same seed's cases is the closer comparison of what each launcher costs. ``--address auto`` runs the
fleet on a cluster already started (``ray start --head --num-cpus 4``), as a fleet runs on a real one: Ray's own
start is then not the fleet's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _command(kind: str, args, scratch: Path) -> list[str]:
    common = [
        "--budget",
        str(args.budget),
        "--world-size",
        str(args.world_size),
        "--seed",
        str(args.seed),
        "--corpus",
        str(scratch / "corpus"),
        "--database",
        str(scratch / "examples"),
        "--report",
        str(scratch / "report.json"),
        "--explain-budget",
        "0",
        "--plain",
        "--exit-zero",
    ]
    if args.max_cases:
        common += ["--max-cases", str(args.max_cases)]
    if kind == "workers":
        return [sys.executable, "-m", "shardfuzz", "run", "--workers", str(args.campaigns), *common]
    address = ["--address", args.address] if args.address else []
    return [sys.executable, "-m", "shardfuzz", "fleet", "--campaigns", str(args.campaigns), *address, *common]


def _one(kind: str, args) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix=f"shardfuzz-bench-{kind}-"))
    try:
        shutil.copytree(REPO / "corpus", scratch / "corpus")
        started = time.perf_counter()
        proc = subprocess.run(_command(kind, args, scratch), capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{kind} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        report = json.loads((scratch / "report.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per = [row.get("cases_run") or 0 for row in report.get("worker_reports", [])]
    spent = {name: round(item["seconds"]) for name, item in report.get("time_spent", {}).items() if item["seconds"]}
    return {"kind": kind, "cases": report["cases_run"], "per_campaign": per, "wall": wall, "spent": spent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--campaigns", type=int, default=2)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-cases", type=int, default=0, help="cases per campaign (0: as many as the budget runs)")
    parser.add_argument(
        "--address",
        default=None,
        help="run the fleet on this running Ray cluster (`ray start --head` first), not a local one",
    )
    args = parser.parse_args()
    results = []
    for round_ in range(args.rounds):
        order = ("workers", "fleet") if round_ % 2 == 0 else ("fleet", "workers")
        for kind in order:
            result = _one(kind, args)
            results.append(result)
            print(
                f"round {round_ + 1} {kind:8s}: {result['cases']:5d} cases in a {args.budget:.0f} s budget "
                f"({result['cases'] / args.budget:.2f}/s), per campaign {result['per_campaign']}, "
                f"command wall {result['wall']:.1f} s; campaign seconds by what: {result['spent']}",
                flush=True,
            )
    for kind in ("workers", "fleet"):
        cases = [r["cases"] for r in results if r["kind"] == kind]
        walls = [r["wall"] for r in results if r["kind"] == kind]
        print(
            f"{kind:8s}: {sum(cases) / len(cases):.1f} cases a run ({sum(cases) / len(cases) / args.budget:.2f}/s "
            f"of budget), command wall {sum(walls) / len(walls):.1f} s ({sum(cases) / sum(walls):.2f} cases/s of wall)"
        )


if __name__ == "__main__":
    main()
