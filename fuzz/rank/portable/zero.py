"""DeepSpeed's ZeRO on a side (``ZeRO`` engine): the engine built over the case's model and optimizer, a training
step through it, and its full state read back by parameter name, as DeepSpeed's own consolidation maps it.

DeepSpeed keeps the optimizer state (and from stage 3 the parameters) as flat partitions of each param group; its
``deepspeed.utils`` API gives each parameter's full float32 master weight and optimizer moments. The state read here
has the keys ``steps.gather_full`` gives the other engines (``model.<fqn>``, ``optim.state.<fqn>.<name>``,
``optim.param_groups.<fqn>.<name>``), so the same oracles judge it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "DataParallelOnly",
    "zero_config",
    "initialize",
    "engine_over",
    "is_zero_engine",
    "zero_full_state",
    "persistent_buffers",
    "zero_train_step",
]


class DataParallelOnly:
    """The model-parallel unit DeepSpeed asks for (its ``mpu``): data parallelism over ``group`` alone, so a side
    may use fewer ranks than the pool has."""

    def __init__(self, group, single):
        self.group, self.single = group, single

    def get_data_parallel_group(self):
        return self.group

    def get_data_parallel_world_size(self):
        return dist.get_world_size(self.group)

    def get_data_parallel_rank(self):
        return dist.get_rank(self.group)

    def get_model_parallel_group(self):
        return self.single

    def get_model_parallel_world_size(self):
        return 1

    def get_model_parallel_rank(self):
        return 0

    def get_tensor_model_parallel_group(self):
        return self.single

    def get_tensor_model_parallel_world_size(self):
        return 1

    def get_tensor_model_parallel_rank(self):
        return 0

    def get_pipeline_model_parallel_world_size(self):
        return 1

    def get_pipeline_model_parallel_rank(self):
        return 0


def zero_config(*, stage: int, bf16: bool, batch_size: int, elastic: bool = False) -> dict:
    """The DeepSpeed config of a ZeRO side: the case's optimizer as the client optimizer, no gradient clipping
    or accumulation (a step is the plain optimizer's), no logging; ``elastic``: ZeRO 1 and 2's elastic checkpoint
    format."""
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage, **({"elastic_checkpoint": True} if elastic else {})},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31,
        "wall_clock_breakdown": False,
    }


def initialize(model, optim, *, stage: int, bf16: bool, batch_size: int, group, single_group, elastic: bool = False):
    """``deepspeed.initialize`` over ``model`` and the client optimizer ``optim`` on ``group``: the engine and its
    ZeRO optimizer. Each parameter's FQN and param group are noted on the engine (``shardfuzz_groups``), for the
    state read by name."""
    import os

    # What DeepSpeed's launcher would have set; the pool's ranks are already a process group (gloo on CPU).
    os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))
    os.environ.setdefault("RANK", str(dist.get_rank()))
    os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.ops

    # DeepSpeed builds its shared-memory CPU collective (inference's all-reduce only, not ZeRO's training or
    # checkpoints) by JIT at start-up, behind a file lock that a rank killed mid-build leaves behind, and every
    # later start waits on it (measured: a 30 s hang in build-save). The ranks do without it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    names = {id(p): fqn for fqn, p in model.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in optim.param_groups]
    trains = [any(p.requires_grad for p in group["params"]) for group in optim.param_groups]
    engine, zero_optim, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optim,
        config=zero_config(stage=stage, bf16=bf16, batch_size=batch_size, elastic=elastic),
        mpu=DataParallelOnly(group, single_group),
    )
    engine.shardfuzz_ungrouped = []  # parameters of groups DeepSpeed left out (ZeRO 3: nothing in them trains)
    if len(zero_optim.param_groups) != len(groups):
        engine.shardfuzz_ungrouped = [fqn for fqns, train in zip(groups, trains) if not train for fqn in fqns]
        groups = [fqns for fqns, train in zip(groups, trains) if train]
    engine.shardfuzz_groups = groups
    return engine, zero_optim


def engine_over(model, optim, engine: dict, *, batch_size: int, group):
    """A side's model and optimizer as its engine runs them: DeepSpeed's engine and ZeRO optimizer (``initialize``)
    on a ZeRO side, the two as built on any other. ``engine`` is the side's engine as plain data (its ``kind``,
    ``stage``, ``bf16`` and ``elastic``). On a ZeRO side every rank of the world calls it: it makes each rank's own
    group."""
    if engine["kind"] != "ZeRO":
        return model, optim
    singles = [dist.new_group([r]) for r in range(dist.get_world_size())]
    stage, bf16, single = engine["stage"], engine["bf16"], singles[dist.get_rank()]
    elastic = engine.get("elastic", False)  # an entry saved before the option had none
    return initialize(
        model, optim, stage=stage, bf16=bf16, batch_size=batch_size, group=group, single_group=single, elastic=elastic
    )


def is_zero_engine(model) -> bool:
    """Whether ``model`` is a DeepSpeed engine built by ``initialize``."""
    return hasattr(model, "shardfuzz_groups")


def zero_train_step(engine, inputs, loss_of) -> None:
    """One step through the engine: forward, ``engine.backward``, ``engine.step`` (which zeroes the gradients).
    With ``bf16`` the engine holds the model in bfloat16, and floating inputs are cast to it, as a trainer does."""
    if engine.bfloat16_enabled():
        inputs = tuple(
            t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs
        )
    engine.backward(loss_of(engine(*inputs)))
    engine.step()


def zero_full_state(engine, optim) -> dict:
    """The engine's full state by name (every rank gathers; each gets the whole): each parameter's float32 master
    weight (``model.<fqn>``: what the checkpoint keeps), how far the copy the model computes with (gathered under
    ZeRO 3, bfloat16 with ``bf16``) is from it (``drift.<fqn>``, zero), the optimizer moments DeepSpeed's API hands
    out, each param group's step and hyperparameters."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    link = getattr(optim, "_lazy_init_hp_params_optimizer_state", None)
    if callable(link) and optim.optimizer.state:
        # ZeRO 1 and 2 link each parameter to its moments at the first step; a load before any step leaves them
        # unlinked and the API raises (TypeError in get_optim_state_fragment): link them as that step would.
        optim._hp_optimizer_states_linked = False
        link()
    flat: dict = {}
    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):  # a no-op below ZeRO 3
        computed = {fqn: p.detach().to("cpu", copy=True) for fqn, p in params.items()}
    steps = [state["step"] for state in optim.optimizer.state.values() if "step" in state]  # every group steps together
    # The per-element state (the moments) is what the partitions hold beside the master weights; DeepSpeed's API
    # raises for a key the optimizer does not keep.
    moments = sorted(
        {k for state in optim.optimizer.state.values() for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0}
    )
    grouped: list = [*enumerate(engine.shardfuzz_groups), (None, engine.shardfuzz_ungrouped)]
    for index, fqns in grouped:
        hyper = {} if index is None else {k: v for k, v in optim.param_groups[index].items() if k != "params"}
        for fqn in fqns:
            param = params[fqn]
            master = safe_get_full_fp32_param(param)  # None for a parameter DeepSpeed does not train (frozen)
            master = computed[fqn].float() if master is None else master.detach().to("cpu", copy=True)
            flat[f"model.{fqn}"] = master
            # The copy the model computes with must be the master weight in its own dtype, on every rank: zero on
            # every side and in every precision, unless a load left the two apart.
            # Summed over the ranks: below ZeRO 3 each rank computes with a whole copy of its own.
            drift = (computed[fqn].float() - master.to(computed[fqn].dtype).float()).abs()
            dist.all_reduce(drift, group=getattr(engine, "data_parallel_group", None))
            flat[f"drift.{fqn}"] = drift
            held = {key: safe_get_full_optimizer_state(param, key) for key in moments}
            held = {key: value.detach().to("cpu", copy=True) for key, value in held.items() if value is not None}
            flat.update({f"optim.state.{fqn}.{key}": value for key, value in held.items()})
            if steps and held:
                step = steps[0]
                flat[f"optim.state.{fqn}.step"] = (
                    step.detach().to("cpu", copy=True) if isinstance(step, torch.Tensor) else torch.tensor(float(step))
                )
            flat.update({f"optim.param_groups.{fqn}.{k}": v for k, v in hyper.items()})
    for name, buffer in persistent_buffers(engine.module):  # as a state dict holds them, and the other engines'
        flat[f"model.{name}"] = buffer.detach().to("cpu", copy=True)
    return flat


def persistent_buffers(module):
    """``module``'s buffers that its state dict holds (not a rotary embedding's non-persistent ``inv_freq``)."""
    for prefix, child in module.named_modules():
        for name, buffer in child.named_buffers(recurse=False):
            if name not in child._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), buffer
