"""torch alone, no shardfuzz: does a PipelineStage's dynamic metadata inference leave its forward's buffer updates in
the model? Two ranks (gloo, CPU), a BatchNorm1d and a Linear per stage, a one-microbatch GPipe schedule, two steps; the
same batches through the unpipelined model on one rank as the reference. Corpus entry 3c8a017c.

    python bench/pipelining_buffers_repro.py [WIDTH]

Prints each stage's BatchNorm num_batches_tracked beside the reference's, whether running_mean equals it, and whether
running_var is finite (a later stage's inference input is made from metadata: uninitialised memory).
"""

import copy
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 2


def run(rank: int, world: int, width: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29591")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    torch.manual_seed(0)
    whole = torch.nn.Sequential(
        torch.nn.BatchNorm1d(width),
        torch.nn.Linear(width, width),
        torch.nn.BatchNorm1d(width),
        torch.nn.Linear(width, 1),
    )
    reference = copy.deepcopy(whole)
    part = whole[0:2] if rank == 0 else whole[2:4]
    schedule = ScheduleGPipe(PipelineStage(part, rank, world, torch.device("cpu")), 1, loss_fn=lambda out, _: out.sum())
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(4, width, generator=generator)
        if rank == 0:
            schedule.step(x)
        else:
            schedule.step(target=torch.zeros(4))
        reference(x).sum().backward()
    norm, expected = part[0], reference[0 if rank == 0 else 2]
    print(
        f"torch {torch.__version__}, width {width}, stage {rank}: num_batches_tracked {int(norm.num_batches_tracked)} "
        f"(unpipelined: {int(expected.num_batches_tracked)}); running_mean equal: "
        f"{torch.equal(norm.running_mean, expected.running_mean)}; running_var finite: "
        f"{bool(torch.isfinite(norm.running_var).all())}",
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]) if len(sys.argv) > 1 else 8), nprocs=2)
