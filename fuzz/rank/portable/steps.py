"""The torch calls of a round-trip's training and state dicts, each written once: the pool's ranks run them, and so
do exported scripts.

``roundtrip.py`` and ``build.py`` call these on the pool's ranks; ``export.py``
copies their definitions, as they are, into every exported script, whose own code
only sequences them. A change to a step here is therefore a change to both. How a
side shards its model is in ``sharding.py``, under the same rules.

What makes the copy work (``tests/test_export.py`` checks it): these functions
take plain values (numbers, strings, dicts such as an engine's fields), never a
``Case``; at the top this module imports only what an exported script imports
(``torch``) and the portable modules copied before it (``sharding``), anything else
inside a function; and they call only each other, the functions of ``sharding.py``
and the classes of ``layers.py``.
"""

from __future__ import annotations

import torch

from shardfuzz.rank.portable.optimizers import first_module_parameters
from shardfuzz.rank.portable.sharding import pipeline_group, rank_device, unwrapped_name
from shardfuzz.rank.portable.zero import is_zero_engine, zero_full_state, zero_train_step

__all__ = [
    "scalar_loss",
    "training_batch",
    "train_steps",
    "pipeline_step",
    "make_scheduler",
    "AppState",
    "make_app_state",
    "app_values",
    "state_dict_options",
    "local_state_dict_type",
    "get_side_state",
    "model_state",
    "model_and_optim_state",
    "set_side_state",
    "plain",
    "plain_parts",
    "gather_full",
    "offloaded_full_state",
    "offloaded_shapes",
    "flat_optim",
    "local_copy",
    "api_parity_pairs",
]


def scalar_loss(output):
    """The training loss of a forward's output: a tensor's squared mean; for a tuple, list or dict (or an
    object with ``logits``, as a Hugging Face model returns), that of its first floating-point tensor."""
    if isinstance(output, torch.Tensor):
        return output.square().mean()
    if isinstance(output, dict):
        output = list(output.values())
    elif not isinstance(output, (tuple, list)):
        output = [getattr(output, "logits", None)]
    first = next((o for o in output if isinstance(o, torch.Tensor) and o.is_floating_point()), None)
    if first is None:
        raise TypeError("the model's output holds no floating-point tensor to train on")
    return first.float().square().mean()


def training_batch(generator, *, batch_size: int, input_width: int, num_embeddings: int, dtype: str):
    """One batch of inputs, drawn on the CPU from ``generator``: token indices for a model
    whose first leaf is an Embedding (``num_embeddings`` > 0), else features in ``dtype``."""
    if num_embeddings:
        return torch.randint(num_embeddings, (batch_size,), generator=generator)
    return torch.randn(batch_size, input_width, generator=generator).to(getattr(torch, dtype))


def train_steps(
    model,
    optim,
    *,
    seed: int,
    first: int,
    count: int,
    rank: int,
    same_batch: bool,
    batch_size: int,
    input_width: int,
    num_embeddings: int,
    dtype: str,
    device: str = "cpu",
    app=None,
    make_batch=None,
    gradless: str = "never",
) -> None:
    """Steps ``first .. first + count - 1`` on batches seeded by (seed, step, rank), drawn on the CPU.

    ``same_batch``: every rank draws the same batches (the rank left out of the seed). ``app``: an
    ``AppState`` whose gradient scaler (if any) scales the loss, and which steps after the optimizer.
    ``make_batch(batch_size, generator)``: a user's model's own inputs (a tensor, or a tuple of the
    forward's arguments) instead of ``training_batch``'s. ``gradless`` ``always`` (or ``first-step``: at step 0
    only): ``first_module_parameters`` have their gradients set to None before the optimizer steps."""
    generator = torch.Generator()
    idle = first_module_parameters(model) if gradless != "never" else []
    for step in range(first, first + count):
        generator.manual_seed(seed * 1_000_003 + step * 101 + (0 if same_batch else rank))
        if make_batch is not None:
            x = make_batch(batch_size, generator)
        else:
            x = training_batch(
                generator, batch_size=batch_size, input_width=input_width, num_embeddings=num_embeddings, dtype=dtype
            )
        inputs = x if isinstance(x, tuple) else (x,)
        if device != "cpu":
            inputs = tuple(t.to(rank_device(device)) if isinstance(t, torch.Tensor) else t for t in inputs)
        scaler = app.scaler if app is not None else None
        if is_zero_engine(model):  # DeepSpeed's engine steps itself (its gradients are its own buckets)
            zero_train_step(model, inputs, scalar_loss)
            if app is not None:
                app.after_step(batch_size)
            continue
        if hasattr(model, "pipeline_stage"):
            pipeline_step(model, inputs, batch_size=batch_size)
        else:
            loss = scalar_loss(model(*inputs))
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if idle and (gradless == "always" or step == 0):
            for p in idle:
                p.grad = None
        if scaler is not None:  # the scale is a power of two: the unscaled step is bit for bit the plain one
            scaler.step(optim)
            scaler.update()
        else:
            optim.step()
        optim.zero_grad()
        if app is not None:
            app.after_step(batch_size)


def pipeline_step(model, inputs, *, batch_size: int) -> None:
    """A pipeline stage's (``sharding.pipeline_stage``) forward and backward of one batch: a GPipe schedule of one
    microbatch (made at the first step, kept as ``model.pipeline_schedule``), the first stage fed ``inputs``, the
    last computing ``scalar_loss``; the same arithmetic as the whole model's on one rank."""
    from torch.distributed.pipelining import ScheduleGPipe

    stage = model.pipeline_stage
    if getattr(model, "pipeline_schedule", None) is None:
        model.pipeline_schedule = ScheduleGPipe(stage, 1, loss_fn=lambda output, _target: scalar_loss(output))
    target = torch.zeros(batch_size) if stage.is_last else None  # the loss needs none; the schedule takes one
    model.pipeline_schedule.step(*(inputs if stage.is_first else ()), target=target)


def make_scheduler(optim, kind: str):
    """The LR scheduler ``kind`` names (``case.SCHEDULERS``) over ``optim``."""
    schedulers = torch.optim.lr_scheduler
    if kind == "step":
        return schedulers.StepLR(optim, step_size=2, gamma=0.5)
    if kind == "cosine":
        return schedulers.CosineAnnealingLR(optim, T_max=8)
    if kind == "linear":
        return schedulers.LinearLR(optim, start_factor=0.25, total_iters=4)
    if kind == "warmup-cosine":
        warmup = schedulers.LinearLR(optim, start_factor=0.25, total_iters=2)
        return schedulers.SequentialLR(optim, [warmup, schedulers.CosineAnnealingLR(optim, T_max=8)], milestones=[2])
    raise ValueError(f"unknown scheduler {kind!r}")


class AppState:
    """A training loop's state beyond the model and optimizer, as one ``Stateful`` in the checkpoint:
    the LR scheduler, a gradient scaler (or None), the step counter and a user object. DCP calls
    ``state_dict`` on save and ``load_state_dict`` (with the template filled) on load."""

    def __init__(self, scheduler, scaler):
        self.scheduler, self.scaler = scheduler, scaler
        self.step, self.tokens_seen = 0, 0
        self.positions = torch.zeros(2, dtype=torch.int64)  # a tensor of the user's: (step, tokens seen)

    def after_step(self, batch_size: int) -> None:
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += batch_size
        self.positions = torch.tensor([self.step, self.tokens_seen])

    def state_dict(self) -> dict:
        state = {
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "user": {"tokens_seen": self.tokens_seen, "positions": self.positions},
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.tokens_seen, self.positions = state["user"]["tokens_seen"], state["user"]["positions"]
        if self.scaler is not None:
            self.scaler.load_state_dict(state["grad_scaler"])


def make_app_state(optim, training: dict | None, *, engine: str, group, device: str = "cpu"):
    """An ``AppState`` for ``training`` (``{"scheduler": kind, "grad_scaler": bool}``), or None without
    one. FSDP1 takes its own ``ShardedGradScaler``; the scaler grows its scale every 2 steps."""
    if training is None:
        return None
    scaler: torch.amp.GradScaler | None = None  # FSDP1's ShardedGradScaler is one
    if training["grad_scaler"]:
        if engine == "FSDP1":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device, growth_interval=2, process_group=group)
        else:
            scaler = torch.amp.GradScaler(device, growth_interval=2)
    return AppState(make_scheduler(optim, training["scheduler"]), scaler)


def app_values(app, optim) -> dict:
    """``app.<path>`` for every value of ``app``'s state, and ``app.next_lr``: the learning rates the
    scheduler's next step gives (taken, then undone: the optimizer's groups and the scheduler are
    restored). Empty without an app state."""
    if app is None:
        return {}
    flat = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{prefix}.{key}", inner)
        elif isinstance(value, list) and any(isinstance(inner, dict) for inner in value):  # SequentialLR's
            for i, inner in enumerate(value):
                visit(f"{prefix}.{i}", inner)
        else:
            flat[prefix] = plain(value)

    visit("app", app.state_dict())
    # A Tensor lr (torchao's optimizers keep one) is stepped in place (fill_): copy it to undo, and undo in place.
    scheduler_state = app.scheduler.state_dict()
    lrs = [plain(group["lr"]) for group in optim.param_groups]
    app.scheduler.step()
    flat["app.next_lr"] = [plain(group["lr"]) for group in optim.param_groups]
    app.scheduler.load_state_dict(scheduler_state)
    for group, lr in zip(optim.param_groups, lrs):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    return flat


def state_dict_options(*, full: bool, flatten: bool, extra: dict):
    """``StateDictOptions`` for a side: ``full_state_dict``, ``flatten_optimizer_state_dict``, and ``extra``
    (only the fields a case sets: an older torch may lack one the case never sets)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, flatten_optimizer_state_dict=flatten, **extra)


def local_state_dict_type(model):
    """FSDP1's ``LOCAL_STATE_DICT`` context: each rank's flat-parameter shard."""
    from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

    return FullyShardedDataParallel.state_dict_type(model, StateDictType.LOCAL_STATE_DICT)


def get_side_state(model, optim, *, kind: str, api: str, options, app=None, held_model=None) -> dict:
    """``{"model": ..., "optim": ...}`` as a side gets it (and ``"app"``: the ``AppState``, where there is
    one). ``kind`` ``local``: FSDP1's own (DSD has no LOCAL form), the optimizer sharded; ``api``
    ``separate``: the model and optimizer getters, else ``get_state_dict``. ``held_model``: the model state
    dict the side took at build and kept (``model_state``), handed on as it is beside a fresh optimizer one."""
    if held_model is not None:
        from torch.distributed.checkpoint import state_dict as dsd

        state = {"model": held_model, "optim": dsd.get_optimizer_state_dict(model, optim, options=options)}
    else:
        state = model_and_optim_state(model, optim, kind=kind, api=api, options=options)
    return {**state, "app": app} if app is not None else state


def model_state(model, *, kind: str, options) -> dict:
    """The model state dict alone (``get_model_state_dict``), as a trainer that holds one from start-up takes it."""
    from torch.distributed.checkpoint import state_dict as dsd

    if kind == "local":
        raise ValueError("a held model state dict is DSD's: a 'local' side has FSDP1's own")
    return dsd.get_model_state_dict(model, options=options)


def model_and_optim_state(model, optim, *, kind: str, api: str, options) -> dict:
    """``get_side_state`` without the app state."""
    from torch.distributed.checkpoint import state_dict as dsd

    if kind == "local":
        with local_state_dict_type(model):
            model_sd = model.state_dict()
        return {"model": model_sd, "optim": dsd.get_optimizer_state_dict(model, optim, options=options)}
    if api == "separate":
        return {
            "model": dsd.get_model_state_dict(model, options=options),
            "optim": dsd.get_optimizer_state_dict(model, optim, options=options),
        }
    model_sd, optim_sd = dsd.get_state_dict(model, optim, options=options)
    return {"model": model_sd, "optim": optim_sd}


def set_side_state(model, optim, state: dict, *, kind: str, api: str, options, rank: int) -> None:
    """``set_state_dict`` (or the model and optimizer setters, or FSDP1's local form; a ``state`` without
    ``"optim"``: the model's setter alone); with ``broadcast_from_rank0`` only rank 0 passes the state (as
    torch documents it: the others receive theirs from rank 0)."""
    from torch.distributed.checkpoint import state_dict as dsd

    if options.broadcast_from_rank0 and rank != 0:
        state = {"model": {}, "optim": {}}
    if "optim" not in state:  # a model-only load (a lenient one): the optimizer stays as it is
        dsd.set_model_state_dict(model, state["model"], options=options)
    elif kind == "local":
        with local_state_dict_type(model):
            model.load_state_dict(state["model"])
        dsd.set_optimizer_state_dict(model, optim, state["optim"], options=options)
    elif api == "separate":
        dsd.set_model_state_dict(model, state["model"], options=options)
        dsd.set_optimizer_state_dict(model, optim, state["optim"], options=options)
    else:
        dsd.set_state_dict(
            model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options
        )


def plain(value):
    """A detached CPU copy of a tensor (the comparisons run on the CPU, whatever the side's device)."""
    return value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value


def plain_parts(key: str, value) -> dict:
    """``{key: plain(value)}``; for a tensor subclass that holds its values in other tensors (torchao's low-bit
    optimizer state: ``codes``, ``scale``, ``qmap``), its dequantised values under ``key`` and each inner tensor
    under ``key:<name>``, so both are compared bit for bit (the subclass itself implements too few ops to compare).
    An inner tensor on one side only is no difference (``oracles.compare_state``): torchao quantises by the local
    shape, so one layout may hold a moment quantised that another holds in float32; its values are compared."""
    inner = getattr(value, "__tensor_flatten__", None)
    if not isinstance(value, torch.Tensor) or inner is None or not hasattr(value, "dequantize"):
        return {key: plain(value)}
    names, _ = inner()
    parts = {key: plain(value.dequantize())}
    parts.update({f"{key}:{name}": plain(getattr(value, name)) for name in names})
    return parts


def gather_full(model, optim, app=None) -> dict:
    """Full, flat, engine-independent state: ``model.<fqn>``, ``optim.<flat key>`` (and ``app_values``).

    The flattened optimizer form keys hyperparameters by parameter, so it has no room for a param group without
    parameters: those groups' hyperparameters are added as ``optim.empty_param_groups.<index>.<name>``.

    ``cpu_offload`` would keep the gather on rank 0 only, but FSDP1 crashes with it
    on CPU ranks (see corpus), so every rank of the side gathers and only rank 0 keeps it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    if is_zero_engine(model):
        return {**zero_full_state(model, optim), **app_values(app, optim)}
    model_sd, optim_sd = get_state_dict(
        model, optim, options=StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    )
    flat = {f"model.{k}": plain(v) for k, v in model_sd.items()}
    for k, v in optim_sd.items():
        flat.update(plain_parts(f"optim.{k}", v))
    for i, group in enumerate(optim.param_groups):
        if not group["params"]:
            flat.update({f"optim.empty_param_groups.{i}.{k}": plain(v) for k, v in group.items() if k != "params"})
    flat.update(app_values(app, optim))
    group = pipeline_group(model)
    if group is not None:  # a pipeline stage holds its own layers: the stages' states make the model's
        import torch.distributed as dist

        stages: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(stages, flat, group=group)
        flat = {key: value for stage in stages for key, value in stage.items()}
    return flat


def offloaded_full_state(model, optim) -> dict:
    """``{flat key: (shape, device type)}`` of every tensor ``full_state_dict`` + ``cpu_offload`` leaves here."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(
        model,
        optim,
        options=StateDictOptions(full_state_dict=True, cpu_offload=True, flatten_optimizer_state_dict=True),
    )
    flat: dict = {f"model.{k}": v for k, v in model_sd.items()}
    flat.update({f"optim.{k}": v for k, v in optim_sd.items()})
    return {k: (tuple(v.shape), v.device.type) for k, v in flat.items() if isinstance(v, torch.Tensor)}


def offloaded_shapes(flat: dict) -> dict:
    """``{key: shape}`` of what ``full_state_dict`` + ``cpu_offload`` must leave on rank 0, out of ``gather_full``'s
    ``flat``: the model's and optimizer's tensors, not the app state or an empty param group's hyperparameters (which
    ``gather_full`` adds, and torchao's lr is a Tensor), and a quantised moment itself, not its inner tensors
    (``key:codes``)."""
    return {
        k: tuple(v.shape)
        for k, v in flat.items()
        if isinstance(v, torch.Tensor) and not k.startswith(("app.", "optim.empty_param_groups.")) and ":" not in k
    }


def flat_optim(osd) -> dict:
    """``state.<fqn>.<name>`` and ``param_groups.<i>.<hyperparameter>`` (without the ``params`` list); the fqn
    without wrapper prefixes (FSDP1's own optimizer state dict keeps ``torch.compile``'s, DSD's drops it)."""
    flat = {
        f"state.{unwrapped_name(fqn)}.{name}": plain(v)
        for fqn, entry in osd.get("state", {}).items()
        for name, v in entry.items()
    }
    for i, group in enumerate(osd.get("param_groups", [])):
        flat.update({f"param_groups.{i}.{k}": v for k, v in group.items() if k != "params"})
    return flat


def local_copy(value):
    """``plain`` of a DTensor's local shard, or of any other value."""
    return plain(value.to_local() if hasattr(value, "to_local") else value)


def api_parity_pairs(model, optim, *, engine: str, group):
    """``(what, ours, theirs)`` for each pair of torch APIs that must agree on this state:
    ``model.state_dict()`` against ``get_model_state_dict``; for FSDP1 also its own optimizer
    state dict against DSD's, and the optimizer's state before against after a reload through
    ``optim_state_dict_to_load``. A generator: each pair is made after the previous one is judged."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True)
    if engine != "FSDP1":
        ours = {unwrapped_name(k): local_copy(v) for k, v in model.state_dict().items()}  # DDP's "module."
        yield (
            "model.state_dict() vs get_model_state_dict",
            ours,
            {k: local_copy(v) for k, v in get_model_state_dict(model).items()},
        )
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    ours = {unwrapped_name(k): plain(v) for k, v in model.state_dict().items()}  # FULL_STATE_DICT; compile's prefix
    theirs = {k: plain(v) for k, v in get_model_state_dict(model, options=full).items()}
    yield "model.state_dict() vs get_model_state_dict(full)", ours, theirs
    fsdp_osd = FSDP.optim_state_dict(model, optim, group=group)
    dcp_osd = get_optimizer_state_dict(model, optim, options=full)
    yield "FSDP.optim_state_dict vs get_optimizer_state_dict(full)", flat_optim(fsdp_osd), flat_optim(dcp_osd)
    optim.load_state_dict(FSDP.optim_state_dict_to_load(model, optim, fsdp_osd, group=group))
    after = get_optimizer_state_dict(model, optim, options=full)
    yield (
        "optimizer state before vs after optim_state_dict_to_load + load_state_dict",
        flat_optim(dcp_osd),
        flat_optim(after),
    )
