"""Throughput of a local Ray fleet of N campaigns against ``shardfuzz run --workers N``, side by side.

Each round runs both, one after the other (which first alternates by round), with the same seed, budget,
world size and options, each on a fresh copy of the repository's corpus (so torch's known bugs stay known
and one run's findings do not become the other's known bugs) and a fresh example database. Reported: the
cases each ran in the budget (from its merged JSON report), cases per second of budget, and the wall time of
the whole command (Ray's start included).

    python bench/fleet_vs_workers.py --budget 120 --campaigns 2 --world-size 2 --rounds 2 --seed 1
    python bench/fleet_vs_workers.py --max-cases 60 --budget 600 --campaigns 2 --world-size 2 --rounds 3 --seed 1

With ``--max-cases`` each campaign stops after that many cases (the budget only a ceiling) and what counts is each
campaign's own rate, its cases over its own wall time (a campaign's budget runs from its own start, so Ray's start
is not in it), summed over the campaigns. A seed draws the same cases under either launcher then (the ``draws``
column, a hash of the coverage counts, says so: equal draws, equal hashes), so the rates compare what each launcher
costs per case. In a budget the counts also depend on what the campaigns' cases did and when (a shrink is cut by
time, the last round is sized to the time left), and one seed's campaign ran 22 cases in some 120 s runs and 44 in
others under either launcher: budget rounds cannot tell the launchers apart at this size. ``--address auto`` runs
the fleet on a cluster already started (``ray start --head --num-cpus 4``), as a fleet runs on a real one.
``--no-database`` runs both without an example database.

Each run's CPU is sampled from ``/proc`` (``_cpu.py``): the machine's busy seconds, and each process's by kind (the
ranks, the campaigns, the driver, the fleet's collector, Ray's own processes), so a difference in rate can be put
down to where it went. ``--also-fleet-with RAY_worker_niceness=0`` adds a fleet with that in its environment to each
round; ``--also-workers-beside-ray`` adds ``--workers`` beside an idle local Ray cluster (is it Ray's own CPU, or do
its processes slow the ranks beside them?).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cpu import CpuSampler

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
        "none" if args.no_database else str(scratch / "examples"),
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


#: A local Ray cluster with three idle actors (a fleet's collector and two campaigns), for ``--also-workers-beside-ray``.
_IDLE_RAY = """
import os, sys, time
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray
ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
Idle = ray.remote(num_cpus=1)(type("Idle", (), {"ping": lambda self: 1}))
actors = [Idle.remote() for _ in range(3)]
ray.get([actor.ping.remote() for actor in actors])
print("ready", flush=True)
sys.stdin.read()  # until the bench closes it
ray.shutdown()
"""


@contextlib.contextmanager
def _beside_idle_ray():
    """An idle local Ray cluster running beside what the block runs (started before it: its CPU is not sampled)."""
    ray = subprocess.Popen([sys.executable, "-c", _IDLE_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if ray.stdout.readline().strip() != "ready":
            raise SystemExit("the idle Ray cluster did not start")
        yield
    finally:
        ray.stdin.close()
        ray.wait(60)


def _one(kind: str, args) -> dict:
    """One run of ``kind``: "workers", "fleet", "fleet KEY=VALUE" (the fleet with that in its environment), or
    "workers beside idle Ray"."""
    if kind == "workers beside idle Ray":
        with _beside_idle_ray():
            return {**_one("workers", args), "kind": kind}
    launcher, _, setting = kind.partition(" ")
    env = dict(os.environ)
    if setting:
        key, _, value = setting.partition("=")
        env[key] = value
    scratch = Path(tempfile.mkdtemp(prefix=f"shardfuzz-bench-{launcher}-"))
    try:
        shutil.copytree(REPO / "corpus", scratch / "corpus")
        started = time.perf_counter()
        with CpuSampler() as cpu:
            proc = subprocess.Popen(
                _command(launcher, args, scratch), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            cpu.attach(proc.pid)
            _, stderr = proc.communicate()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{kind} exited {proc.returncode}:\n{stderr[-3000:]}")
        report = json.loads((scratch / "report.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = report.get("worker_reports", [])
    per = [row.get("cases_run") or 0 for row in rows]
    # each campaign's rate in its own time (its budget runs from its own start): the fleet's, summed
    rate = sum((row.get("cases_run") or 0) / row["wall_seconds"] for row in rows if row.get("wall_seconds"))
    spent = {name: round(item["seconds"]) for name, item in report.get("time_spent", {}).items() if item["seconds"]}
    drawn = hashlib.sha256(json.dumps(report.get("coverage"), sort_keys=True).encode()).hexdigest()[:8]
    return {
        "kind": kind,
        "cases": report["cases_run"],
        "per_campaign": per,
        "wall": wall,
        "spent": spent,
        "rate": rate,
        "campaign_walls": [round(row.get("wall_seconds") or 0, 1) for row in rows],
        "drawn": drawn,
        "cpu": cpu.by_kind(),
        "machine_cpu": cpu.machine,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--campaigns", type=int, default=2)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-cases", type=int, default=0, help="cases per campaign (0: as many as the budget runs)")
    parser.add_argument(
        "--no-database", action="store_true", help="no example database (`--database none`) for either launcher"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="run the fleet on this running Ray cluster (`ray start --head` first), not a local one",
    )
    parser.add_argument(
        "--also-fleet-with",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also run, each round, a fleet with this in its environment (e.g. RAY_worker_niceness=0); repeatable",
    )
    parser.add_argument(
        "--also-workers-beside-ray",
        action="store_true",
        help="also run, each round, --workers beside an idle local Ray cluster with three idle actors (is what the "
        "fleet costs Ray's processes' own CPU, or do they slow the ranks beside them too?)",
    )
    args = parser.parse_args()
    kinds = ["workers", "fleet", *(f"fleet {setting}" for setting in args.also_fleet_with)]
    if args.also_workers_beside_ray:
        kinds.append("workers beside idle Ray")
    results = []
    for round_ in range(args.rounds):
        order = kinds if round_ % 2 == 0 else kinds[::-1]
        for kind in order:
            result = _one(kind, args)
            results.append(result)
            print(
                f"round {round_ + 1} {kind}: {result['cases']:5d} cases in a {args.budget:.0f} s budget "
                f"({result['cases'] / args.budget:.2f}/s), per campaign {result['per_campaign']}, "
                f"campaign walls {result['campaign_walls']} s ({result['rate']:.3f} cases/s summed), draws {result['drawn']}, "
                f"command wall {result['wall']:.1f} s; campaign seconds by what: {result['spent']}; "
                f"CPU s {result['machine_cpu']:.1f} machine-wide, {result['machine_cpu'] / max(result['cases'], 1):.3f} a case, "
                f"by process: {result['cpu']}",
                flush=True,
            )
    rates_of = {kind: [r["rate"] for r in results if r["kind"] == kind] for kind in kinds}
    for kind, rates in rates_of.items():
        ran = [r for r in results if r["kind"] == kind]
        cases, walls = sum(r["cases"] for r in ran), sum(r["wall"] for r in ran)
        print(
            f"{kind}: {cases / len(ran):.1f} cases a run ({cases / len(ran) / args.budget:.2f}/s of budget), command "
            f"wall {walls / len(ran):.1f} s ({cases / walls:.2f} cases/s of wall), campaigns' own rate "
            f"{sum(rates) / len(rates):.3f} cases/s (rounds: {', '.join(f'{r:.3f}' for r in rates)}), machine CPU "
            f"{sum(r['machine_cpu'] for r in ran) / cases:.3f} s a case"
        )
    for kind in kinds[1:]:
        ratios = [f / w for w, f in zip(rates_of["workers"], rates_of[kind])]
        print(f"{kind} / workers, campaigns' own rate, round by round: {', '.join(f'{r:.1%}' for r in ratios)}")


if __name__ == "__main__":
    main()
