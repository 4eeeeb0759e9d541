"""Two gloo ranks on CPU, one all_reduce: exit 0 when they work (a GPU sandbox once hung here).

timeout 45 python bench/probe_gloo.py
"""

import sys
import tempfile

import torch.multiprocessing as mp


def rank(r: int, path: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=r, world_size=2)
    total = torch.ones(1)
    dist.all_reduce(total)
    assert total.item() == 2, total
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(rank, args=(tempfile.mktemp(),), nprocs=2)
    print("two gloo ranks: all_reduce ok")
    sys.exit(0)
