"""torch and torchao alone, no shardfuzz: does a torchao low-bit AdamW's state survive a DCP checkpoint that changes
how a parameter is sharded? Corpus entry c43475c5 (``torchao-low-bit-state-precision-follows-the-local-shard``).

torchao quantises a parameter's moments only where its local piece has 4,096 elements or more and whole blocks, so
one parameter's state can be float32 on the saving layout and quantised on the loading one. Each trial: FSDP2 over
N gloo ranks holds ``Linear(1, W)`` and takes STEPS steps (the loss squares the output, so the gradients differ by
element), saves the optimizer's sharded state with DCP, and one rank with a plain module loads it through DSD.

    python bench/lowbit_precision_repro.py [--bits 8|4] N,W [N,W ...]     # default: 4,8192 2,8192 8,4096

Prints the state's type on each side and, per moment, how many elements differ from what was saved and by how much.
"""

import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 1


def _model(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, width))


def _optimizer(params, bits: int):
    from torchao.optim import AdamW4bit, AdamW8bit

    return (AdamW8bit if bits == 8 else AdamW4bit)(params, lr=0.01)


def _local_type(tensor) -> str:
    from torch.distributed.tensor import DTensor

    return type(tensor.to_local() if isinstance(tensor, DTensor) else tensor).__name__


def _plain(tensor) -> torch.Tensor:
    return (tensor.dequantize() if hasattr(tensor, "dequantize") else tensor).float().clone()


def save(rank: int, world: int, width: int, bits: int, path: str, port: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model(width, 0)
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    optimizer = _optimizer(model.parameters(), bits)
    batches = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        (model(torch.randn(2, 1, generator=batches)) ** 2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    sharded = get_optimizer_state_dict(model, optimizer)
    full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        print("  saved state on rank 0:", {k: _local_type(v["exp_avg"]) for k, v in sharded["state"].items()})
        expected = {k: {m: _plain(t) for m, t in v.items() if m != "step"} for k, v in full["state"].items()}
        torch.save(expected, os.path.join(path, "expected.pt"))
    dcp.save({"optim": sharded}, checkpoint_id=path)
    dist.destroy_process_group()


def load(rank: int, width: int, bits: int, path: str, port: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=1)
    model = _model(width, 5)
    optimizer = _optimizer(model.parameters(), bits)
    state = get_optimizer_state_dict(model, optimizer)
    dcp.load({"optim": state}, checkpoint_id=path)
    set_optimizer_state_dict(model, optimizer, state)
    params = dict(model.named_parameters())
    for key, moments in torch.load(os.path.join(path, "expected.pt")).items():
        for name, want in moments.items():
            got = optimizer.state[params[key]][name]
            diff = (_plain(got) - want).abs()
            print(
                f"  {key}.{name}: loaded as {type(got).__name__}; {int((diff > 0).sum())} of {diff.numel()} differ, "
                f"largest by {diff.max().item():.2e} (largest |value| {want.abs().max().item():.2e})"
            )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, choices=(8, 4), default=8)
    parser.add_argument("trials", nargs="*", default=["4,8192", "2,8192", "8,4096"], help="N,W: ranks saving, width")
    args = parser.parse_args()
    for trial in args.trials:
        world, width = (int(part) for part in trial.split(","))
        path = tempfile.mkdtemp(prefix="lowbit-")
        print(f"FSDP2 on {world} ranks saves Linear(1, {width}) with AdamW{args.bits}bit; one rank loads it")
        mp.start_processes(save, args=(world, width, args.bits, path, 29631), nprocs=world, start_method="spawn")
        mp.start_processes(load, args=(width, args.bits, path, 29632), nprocs=1, start_method="spawn")


if __name__ == "__main__":
    main()
