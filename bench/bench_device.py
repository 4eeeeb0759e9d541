"""Seconds per case on GPU (NCCL) ranks against the same cases on CPU (gloo) ranks.

Draws cases at ``--world-size`` (one rank per GPU: NCCL refuses two ranks on one GPU), keeps
those that pass both with their sides on CPU and with both sides moved to CUDA (on the same
warm ``RankPool(device="cuda")``: its world is ``cpu:gloo,cuda:nccl``), then times each case
both ways, alternating so drift hits both alike. Every case is run once untimed first (CUDA's
lazy initialisation, NCCL's first communicator, gloo's first collective are not charged).

    python bench/bench_device.py --cases 20 --json out.json

Needs a GPU; prints why not and exits 2 without one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=1, help="ranks (at most the GPU count; default 1)")
    parser.add_argument("--cases", type=int, default=20, help="passing cases to time (default 20)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    import torch

    from shardfuzz.capabilities import capabilities
    from shardfuzz.executor import RankPool
    from shardfuzz.findings.replay import moved_to_cuda
    from shardfuzz.strategies import cases

    gpus = capabilities().cuda_devices
    if gpus < args.world_size:
        print(f"bench_device: needs {args.world_size} GPU(s), found {gpus}: {capabilities().off.get('device cuda')}")
        return 2
    sys.path.insert(0, os.path.dirname(__file__))
    from _draws import for_each_drawn_case

    drawn: list = []
    for_each_drawn_case(
        cases(max_world_size=args.world_size, vary_storage=True),
        examples=args.cases * 4,
        seed=args.seed,
        run=drawn.append,
    )
    timings: dict[str, list[float]] = {"cpu": [], "cuda": []}
    with RankPool(args.world_size, device="cuda") as pool:
        pairs = []
        for case in drawn:
            on_gpu, moved = moved_to_cuda(case, gpus)
            if moved == ("save", "load") and pool.run(case).ok and pool.run(on_gpu).ok:
                pairs.append((case, on_gpu))  # the untimed first run of each, both ways
            if len(pairs) == args.cases:
                break
        for case, on_gpu in pairs:
            for device, which in (("cpu", case), ("cuda", on_gpu)):
                began = time.perf_counter()
                verdict = pool.run(which)
                timings[device].append(time.perf_counter() - began)
                assert verdict.ok, verdict.summary()
    if not pairs:
        print("bench_device: no drawn case passed both ways")
        return 1
    result = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "world_size": args.world_size,
        "cases": len(pairs),
        "cpus": os.cpu_count(),
        **{
            f"{device}_ms": {
                "mean": round(1000 * statistics.mean(t), 1),
                "median": round(1000 * statistics.median(t), 1),
                "min": round(1000 * min(t), 1),
            }
            for device, t in timings.items()
        },
    }
    result["cuda_over_cpu"] = round(result["cuda_ms"]["mean"] / result["cpu_ms"]["mean"], 2)
    print(
        f"torch {result['torch']} on {result['gpu']}, world size {args.world_size}, {len(pairs)} cases passing both ways: "
        f"CPU ranks (gloo) {result['cpu_ms']['mean']} ms a case (median {result['cpu_ms']['median']}), "
        f"GPU ranks (NCCL) {result['cuda_ms']['mean']} ms (median {result['cuda_ms']['median']}); "
        f"GPU / CPU {result['cuda_over_cpu']}x"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
