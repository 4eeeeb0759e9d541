"""A corpus entry as one standalone Python script that needs only torch: the file for a bug report.

The script spells the case out as straight-line torch code (the model as
``nn.Sequential(...)`` literals, the sharding calls, the optimizer, the training
loop, ``get_state_dict`` / ``dcp.save`` / ``dcp.load`` / ``set_state_dict``), then
compares the full state before saving and after loading bit for bit. It runs
under ``torchrun --nproc-per-node N`` or as ``python repro.py`` (it spawns its
own gloo ranks), prints ``REPRODUCED`` and exits 1 when the failure shows, and
prints ``did not reproduce`` and exits 0 when it does not.

It must do what ``roundtrip.run_case`` does, step for step; ``tests/test_export.py``
runs exported scripts next to the pool to keep the two in agreement.
"""

from __future__ import annotations

from string import Template

from shardfuzz.case import FSDP1, FSDP2, SGD, Adam, Block, Case, Linear, Sequential, Side, child_items
from shardfuzz.corpus import Entry
from shardfuzz.targets import DEFAULT_TARGET

__all__ = ["export_script"]


def export_script(entry: Entry, *, filename: str = "repro.py") -> str:
    """The text of a standalone reproducer for ``entry``."""
    case = entry.case
    uses_block = _uses_block(case.model.root)
    return _TEMPLATE.substitute(
        title=entry.title.replace('"""', "'''"),
        status=f"{entry.status} ({entry.triage})",
        signature=entry.signature,
        versions=", ".join(f"{k} {v}" for k, v in sorted(entry.versions.items())) or "unknown",
        known=(f"\nKnown bug: {entry.known.link or entry.known.description} (torch {entry.known.torch})"
               if entry.known else ""),
        filename=filename,
        world_size=case.world_size,
        save_ranks=case.save.world_size,
        load_ranks=case.load.world_size,
        save_ranks_minus=case.save.world_size - 1,
        load_ranks_minus=case.load.world_size - 1,
        seed=case.seed,
        steps=case.steps,
        batch_size=case.batch_size,
        input_width=case.model.input_width,
        flatten=case.flatten_optimizer_state_dict,
        save_full=case.save.state_dict == "full",
        load_full=case.load.state_dict == "full",
        block_class=_BLOCK_CLASS if uses_block else "",
        model=_module_expr(case.model.root, case.model.input_width, indent=8)[0],
        shard_save=_shard_function("shard_save", case.save),
        shard_load=_shard_function("shard_load", case.load),
        optimizer=_optimizer_expr(case.optimizer),
        target=_target_code(entry.target),
    )


def _uses_block(node) -> bool:
    if isinstance(node, Linear):
        return False
    return isinstance(node, Block) or any(_uses_block(c) for c in node.children)


def _module_expr(node, width: int, indent: int) -> tuple[str, int]:
    """Python source building ``node`` fed ``width`` features, and the width it outputs."""
    if isinstance(node, Linear):
        return f"nn.Linear({width}, {node.out_features}, bias={node.bias})", node.out_features
    pad = " " * (indent + 4)
    parts = []
    for name, child in child_items(node):
        text, width = _module_expr(child, width, indent + 4)
        parts.append(f"{pad}{text}," if isinstance(node, Sequential) else f"{pad}({name!r}, {text}),")
    body = "\n".join(parts)
    close = " " * indent
    if isinstance(node, Sequential):
        return f"nn.Sequential(\n{body}\n{close})", width
    return f"Block([\n{body}\n{close}])", width


def _shard_function(name: str, side: Side) -> str:
    engine = side.engine
    wrap = list(side.wrap)
    if isinstance(engine, FSDP1):
        policy = (
            f"    inner = {{id(model.get_submodule(path)) for path in {wrap!r}}}\n"
            "    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in inner)\n"
            if wrap else "    policy = None\n"
        )
        return (
            f"def {name}(model, group):\n"
            "    from torch.distributed.fsdp import FullyShardedDataParallel\n"
            "    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy\n\n"
            f"{policy}"
            "    return FullyShardedDataParallel(model, process_group=group, device_id=torch.device('cpu'),\n"
            f"                                    use_orig_params={engine.use_orig_params}, "
            "auto_wrap_policy=policy)\n"
        )
    assert isinstance(engine, FSDP2)
    innermost_first = sorted(wrap, key=lambda p: -p.count("."))
    raf = engine.reshard_after_forward
    return (
        f"def {name}(model, group):\n"
        "    mesh = DeviceMesh.from_group(group, 'cpu')\n"
        f"    for path in {innermost_first!r}:  # innermost first\n"
        f"        fully_shard(model.get_submodule(path), mesh=mesh, reshard_after_forward={raf})\n"
        f"    fully_shard(model, mesh=mesh, reshard_after_forward={raf})\n"
        "    return model\n"
    )


def _optimizer_expr(spec) -> str:
    if isinstance(spec, SGD):
        return f"torch.optim.SGD(params, lr={spec.lr!r}, momentum={spec.momentum!r})"
    if isinstance(spec, Adam):
        return f"torch.optim.Adam(params, lr={spec.lr!r})"
    raise TypeError(f"cannot export optimizer {spec!r}")


def _target_code(target: str) -> str:
    if target == DEFAULT_TARGET:
        return (
            "def save(state, checkpoint_dir, group):\n"
            "    dcp.save(state, checkpoint_id=checkpoint_dir, process_group=group)\n\n\n"
            "def load(state, checkpoint_dir, group):\n"
            "    dcp.load(state, checkpoint_id=checkpoint_dir, process_group=group)\n"
        )
    module, _, attribute = target.partition(":")
    return (
        f"# The failure was found in this checkpoint code, not in DCP: it must be importable.\n"
        f"from {module} import {attribute} as _Target\n\n"
        "_target = _Target() if isinstance(_Target, type) else _Target\n\n\n"
        "def save(state, checkpoint_dir, group):\n"
        "    _target.save(state, checkpoint_id=checkpoint_dir, process_group=group)\n\n\n"
        "def load(state, checkpoint_dir, group):\n"
        "    _target.load(state, checkpoint_id=checkpoint_dir, process_group=group)\n"
    )


_BLOCK_CLASS = '''

class Block(nn.Module):
    """A custom container: named children applied in order."""

    def __init__(self, children):
        super().__init__()
        self._order = [name for name, _ in children]
        for name, child in children:
            self.add_module(name, child)

    def forward(self, x):
        for name in self._order:
            x = getattr(self, name)(x)
        return x
'''

_TEMPLATE = Template('''#!/usr/bin/env python3
"""Standalone reproducer exported by shardfuzz.

${title}

Recorded: ${status}; seen on ${versions}.
Signature: ${signature}${known}

Needs only torch. Run either of:
    python ${filename}                              # spawns ${world_size} gloo rank(s) on CPU
    torchrun --nproc-per-node ${world_size} ${filename}
It prints REPRODUCED and exits 1 when the failure shows, "did not reproduce" and 0 otherwise.
Ranks 0..${save_ranks_minus} save (the save side), ranks 0..${load_ranks_minus} load (the load side).
"""

import datetime
import functools
import os
import shutil
import sys
import tempfile
import traceback
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6
    from torch.distributed._composable.fsdp import fully_shard

warnings.simplefilter("ignore", UserWarning)  # torch's FSDP chatter; delete this line to see it

WORLD_SIZE = ${world_size}
SAVE_RANKS = ${save_ranks}
LOAD_RANKS = ${load_ranks}
SEED = ${seed}  # save side's weights and the data; the load side starts from SEED + 1
STEPS = ${steps}
BATCH_SIZE = ${batch_size}
INPUT_WIDTH = ${input_width}
FLATTEN_OPTIMIZER_STATE_DICT = ${flatten}
SAVE_FULL_STATE_DICT = ${save_full}
LOAD_FULL_STATE_DICT = ${load_full}
${block_class}

def build_model(seed):
    torch.manual_seed(seed)
    return ${model}


${shard_save}

${shard_load}

def make_optimizer(model):
    params = model.parameters()
    return ${optimizer}


${target}

def train(model, optim, rank):
    generator = torch.Generator()
    for step in range(STEPS):
        generator.manual_seed(SEED * 1_000_003 + step * 101 + rank)
        x = torch.randn(BATCH_SIZE, INPUT_WIDTH, generator=generator)
        model(x).square().mean().backward()
        optim.step()
        optim.zero_grad()


def side_state(model, optim, full):
    options = StateDictOptions(full_state_dict=full, flatten_optimizer_state_dict=FLATTEN_OPTIMIZER_STATE_DICT)
    model_sd, optim_sd = get_state_dict(model, optim, options=options)
    return {"model": model_sd, "optim": optim_sd}, options


def full_state(model, optim):
    """Everything gathered to full tensors, flat: 'model.<fqn>' and 'optim.<key>'."""
    options = StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    model_sd, optim_sd = get_state_dict(model, optim, options=options)
    flat = {f"model.{k}": v for k, v in model_sd.items()}
    flat.update({f"optim.{k}": v for k, v in optim_sd.items()})
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in flat.items()}


def differences(expected, actual):
    """Keys missing or extra, and values that differ in dtype, shape or any bit."""
    found = [f"missing after load: {k}" for k in sorted(set(expected) - set(actual))]
    found += [f"extra after load: {k}" for k in sorted(set(actual) - set(expected))]
    for key in sorted(set(expected) & set(actual)):
        e, a = expected[key], actual[key]
        if isinstance(e, torch.Tensor) and isinstance(a, torch.Tensor):
            if e.dtype != a.dtype or e.shape != a.shape:
                found.append(f"{key}: {e.dtype}{list(e.shape)} saved, {a.dtype}{list(a.shape)} loaded")
            elif not torch.equal(_bits(e), _bits(a)):
                index = (_bits(e) != _bits(a)).nonzero()[0].tolist()
                found.append(f"{key} at {index}: saved {e[tuple(index)].item()!r}, "
                             f"loaded {a[tuple(index)].item()!r}")
        elif (list(e) if isinstance(e, tuple) else e) != (list(a) if isinstance(a, tuple) else a):
            found.append(f"{key}: saved {e!r}, loaded {a!r}")
    return found


def _bits(t):
    t = t.detach().contiguous()
    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(views[t.element_size()]) if t.is_floating_point() and t.numel() else t


def round_trip(rank, checkpoint_dir):
    """This rank's part: save on ranks < SAVE_RANKS, load on ranks < LOAD_RANKS, compare on rank 0."""
    phase = "groups"
    groups = {}
    for n in sorted({SAVE_RANKS, LOAD_RANKS}):
        groups[n] = dist.group.WORLD if n == WORLD_SIZE else dist.new_group(list(range(n)))
    try:
        expected = None
        if rank < SAVE_RANKS:
            phase = "build-save"
            model = shard_save(build_model(SEED), groups[SAVE_RANKS])
            optim = make_optimizer(model)
            phase = "train"
            train(model, optim, rank)
            phase = "gather-saved"
            expected = full_state(model, optim)
            phase = "save"
            state, _ = side_state(model, optim, SAVE_FULL_STATE_DICT)
            save(state, checkpoint_dir, groups[SAVE_RANKS])
            del model, optim, state
        phase = "barrier"
        dist.barrier()
        if rank < LOAD_RANKS:
            phase = "build-load"
            model = shard_load(build_model(SEED + 1), groups[LOAD_RANKS])
            optim = make_optimizer(model)
            phase = "load"
            state, options = side_state(model, optim, LOAD_FULL_STATE_DICT)
            load(state, checkpoint_dir, groups[LOAD_RANKS])
            set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"],
                           options=options)
            phase = "gather-loaded"
            actual = full_state(model, optim)
            if rank == 0:
                phase = "compare"
                found = differences(expected, actual)
                if found:
                    raise AssertionError(f"{len(found)} difference(s) after the round-trip; first: {found[0]}")
    except BaseException as exc:
        print(f"REPRODUCED on rank {rank} in {phase}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # peers may be blocked in a collective: do not wait for them
    if rank == 0:
        print("did not reproduce: the state round-tripped bit for bit")


def rank_main(rank, world_size, init_file, checkpoint_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=300))
    round_trip(rank, checkpoint_dir)
    dist.destroy_process_group()


def main():
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        if dist.get_world_size() != WORLD_SIZE:
            sys.exit(f"run with --nproc-per-node {WORLD_SIZE}, not {dist.get_world_size()}")
        holder = [tempfile.mkdtemp(prefix="shardfuzz-repro-") if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        round_trip(dist.get_rank(), holder[0])
        dist.destroy_process_group()
        if dist.get_rank() == 0:
            shutil.rmtree(holder[0], ignore_errors=True)
        return
    import torch.multiprocessing as mp

    scratch = tempfile.mkdtemp(prefix="shardfuzz-repro-")
    try:
        mp.spawn(rank_main, args=(WORLD_SIZE, os.path.join(scratch, "store"), os.path.join(scratch, "ckpt")),
                 nprocs=WORLD_SIZE, join=True)
    except Exception:  # a rank exited 1 after printing REPRODUCED, or died
        sys.exit(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
''')
