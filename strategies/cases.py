"""``cases()``: the composition of every dimension into one Case."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    FSDP1,
    FSDP2,
    LOW_BIT_WIDTH,
    LOWERS_PARAMETERS,
    PP,
    Case,
    Dcp,
    DcpToTorchSave,
    HfSafetensors,
    Linear,
    LowBitAdamW,
    Model,
    Sequential,
    Side,
    TorchSave,
    UserModel,
    zero_to_fp32_route,
)
from shardfuzz.strategies._helpers import check_int
from shardfuzz.strategies.engines import side_wrappers
from shardfuzz.strategies.modules import models
from shardfuzz.strategies.options import (
    checks,
    flatten_optimizer_state_dict,
    load_mutations,
    loops,
    low_bit_optimizers,
    mixed_precisions,
    optimizer_steps,
    optimizers,
    param_groups,
    rarely,
    storages,
    training_states,
)
from shardfuzz.strategies.sides import _check_devices, _pipelined, _side_drawer, zero_routed
from shardfuzz.targets.support import EVERYTHING, TargetSupport
from shardfuzz.unsupported import copies_its_state_dict, exact_world_size, excluded

__all__ = ["cases"]


def cases(
    *,
    max_world_size: int = 4,
    max_leaves: int = 6,
    max_width: int = 16,
    max_steps: int = 3,
    engine_names=None,
    devices=("cpu",),
    gpus: int | None = None,
    vary_storage: bool = True,
    support: TargetSupport | None = None,
    model: Model | UserModel | None = None,
    low_bit: bool = True,
) -> st.SearchStrategy[Case]:
    """Round-trip cases whose sides each use at most ``max_world_size`` ranks.

    ``low_bit``: torchao's low-bit AdamW where it is installed (``LowBitAdamW``, drawn in about 1 case in 6); such a case's
    model ends in one Linear of ``LOW_BIT_WIDTH`` outputs beyond ``max_leaves`` and ``max_width``, as torchao
    quantises nothing smaller. False keeps every case within the bounds.

    Save and load sides are drawn independently, so most cases reshard (other
    world size, other engine or other wrap set) between save and load. With
    ``devices=("cpu", "cuda")`` each side is on either, so cases also cross devices
    (see ``sides`` for ``gpus``).

    ``vary_storage=False``: every case writes and reads its checkpoint the default way
    (``dcp.save``/``dcp.load``), for a user's target, which does its own I/O.

    ``support``: only cases the target declares it runs (``TargetSupport``); the sides span the
    whole pool of ``max_world_size`` ranks where it says so.

    ``model``: every case on this model (``UserModel``: the user's own, ``--model``) instead of drawn
    trees; a user's model is sharded as it is (no tensor parallelism, per-leaf wrappers or
    incompatible variant: ``Case`` says why).
    """
    check_int("max_world_size", max_world_size, minimum=1)
    check_int("max_leaves", max_leaves, minimum=1)
    check_int("max_width", max_width, minimum=1)
    check_int("max_steps", max_steps, minimum=0)

    if model is not None and not isinstance(model, (Model, UserModel)):
        raise InvalidArgument(f"model must be a Model or a UserModel, got {type(model).__name__}")
    model_trees = models(max_leaves=max_leaves, max_width=max_width) if model is None else st.just(model)
    users_own = isinstance(model, UserModel)
    if users_own:
        engine_names = tuple(name for name in (engine_names or capabilities().engines) if name not in ("tp", "pp"))
    draw_side = _side_drawer(
        max_world_size=max_world_size, engine_names=engine_names, devices=devices, gpus=gpus, support=support
    )
    target = support or EVERYTHING
    optimizer_choice, step_counts, flatten = (
        optimizers(),
        optimizer_steps(max_steps=max_steps)
        if not target.min_steps
        else st.integers(target.min_steps, max(max_steps, target.min_steps)),
        flatten_optimizer_state_dict() if target.flatten else st.just(False),
    )
    seeds, check_sets, group_counts, mutations = st.integers(0, 2**16), checks(), param_groups(), load_mutations()
    if users_own:
        mutations = st.none()
    storage_choice = storages() if vary_storage and (support is None or support.storages) else st.just(Dcp())
    offload, sometimes, caps = rarely(), st.booleans(), capabilities()  # sometimes: a broadcast, where one can be
    if not target.options:  # the target sets its own StateDictOptions
        offload = sometimes = st.just(False)
    ignore_frozen = rarely(one_in=4) if caps.ignore_frozen_params and target.options else st.just(False)
    local_allowed = target.state_dicts is None or "local" in target.state_dicts
    local_choice = rarely(one_in=4) if caps.local_state_dict and local_allowed else st.just(False)
    gpu_limit = min(max_world_size, _check_devices(devices, gpus)[1])
    local_meshes = {  # a CUDA side has one rank per GPU
        device: st.sampled_from([(n,) for n in range(1, limit + 1)])
        for device, limit in (("cpu", max_world_size), ("cuda", gpu_limit))
        if limit >= 1
    }
    training_choice = training_states() if target.training_state else st.none()
    low_bit_choice = st.none() if users_own or not low_bit else low_bit_optimizers(caps.low_bit_optimizers)
    lowered, offloaded_params, offset_choice = mixed_precisions(one_in=3), rarely(one_in=4), rarely(one_in=3)
    loop_choices = {  # by (save side may hold, load side may hold, lenient possible, resumes possible)
        flags: loops(
            held=flags[0] and target.held_state_dicts and caps.held_state_dicts,
            load_held=flags[1] and target.held_state_dicts and caps.held_state_dicts,
            lenient=flags[2] and target.lenient_loads and caps.lenient_loads and not users_own,
            resumes=flags[3],
        )
        for flags in itertools.product((False, True), repeat=4)
    }

    def with_options(draw, save: Side, load: Side, storage, must_flatten: bool, mutation) -> tuple[Side, Side]:
        """The sides' ``StateDictOptions`` fields, and the state-dict types the storage needs. ``must_flatten``: the
        optimizer state is handed over flattened whatever is drawn (a pipeline's), so the load cannot broadcast."""
        if isinstance(storage, TorchSave):
            save = attrs.evolve(save, state_dict="full")
        if isinstance(storage, (TorchSave, DcpToTorchSave)):
            load = attrs.evolve(load, state_dict="full")
        # Not on FSDP1: its cpu_offload state dicts crash or fail on CPU ranks, two known torch
        # bugs (corpus 5ce9e3bc55f14af9, 5ad10a11fe519266) that would otherwise eat campaigns.
        save = attrs.evolve(save, cpu_offload=draw(offload) and not isinstance(save.engine, (FSDP1, PP)))
        # broadcast_from_rank0 where unsupported.py allows it: a full load on a DTensor engine (not
        # FSDP1) whose side spans the whole pool (DSD broadcasts on the default group). Two known
        # torch bugs would otherwise fail every such case: set_state_dict hangs (ranks > 0 skip the
        # model's broadcast, corpus d8d54e226d0d9f6c), and a flattened optimizer state dict fails with
        # KeyError 'state' (corpus 37dad3dee68fd22a). So: the separate setters, optimizer state nested.
        # And a compatible load: only rank 0 holds the state, so an incompatible one can raise on
        # rank 0 alone, the others left waiting in the broadcast (a hang, not a torch bug).
        broadcast = (
            caps.broadcast_from_rank0
            and load.state_dict == "full"
            and not isinstance(load.engine, (FSDP1, PP))
            and load.world_size == max_world_size
            and not must_flatten
            and mutation is None
            and not storage.model_only
            and draw(sometimes)
        )
        # Offloaded, a full state dict is on rank 0 alone: only a broadcasting load can take it.
        offloaded = (
            draw(offload) and not isinstance(load.engine, (FSDP1, PP)) and (load.state_dict != "full" or broadcast)
        )
        load = attrs.evolve(
            load,
            cpu_offload=offloaded,
            broadcast_from_rank0=broadcast,
            state_dict_api="separate" if broadcast else load.state_dict_api,
        )
        return save, load

    def with_local(draw, save: Side, load: Side) -> tuple[Side, Side]:
        """Both sides FSDP1 ``local`` (``use_orig_params=False``: with True the local state dict
        holds per-rank views DCP cannot write, a known torch bug) where the save side can be:
        the load side the same topology (the seed-002 round-trip), the save side's on another
        number of ranks (torch unpads the flat shards so that this can load), or its own."""
        engine = save.engine
        if not (isinstance(engine, FSDP1) and not engine.hybrid):
            return save, load
        local: dict[str, Any] = dict(
            state_dict="local", cpu_offload=False, broadcast_from_rank0=False, state_dict_api="combined"
        )
        save = attrs.evolve(save, engine=attrs.evolve(engine, use_orig_params=False), **local)
        other = load.engine
        choice = draw(st.sampled_from(("same", "other-ranks", "own")))
        if choice == "own" and isinstance(other, FSDP1) and not other.hybrid:
            return save, attrs.evolve(load, engine=attrs.evolve(other, use_orig_params=False), **local)
        if choice == "other-ranks" and caps.fsdp1_subgroups:
            return save, attrs.evolve(save, mesh_shape=draw(local_meshes[save.device]))
        return save, save

    def with_precision(draw, side: Side, model: Model) -> Side:
        """FSDP mixed precision (a float32 model) and FSDP2's parameter offload, drawn for a side that has them;
        activation checkpointing after FSDP1, not before."""
        fsdp = isinstance(side.engine, (FSDP1, FSDP2))
        if isinstance(side.engine, FSDP1) and side.activation_checkpointing == "before":
            # Activation checkpointing before FSDP1 wraps meets DSD's name mapping through the wrapper on
            # nearly every load (known bugs 6ddb8a9ec9add59c and its family in corpus/: missing optimizer
            # state, KeyError, unexpected keys); it would eat campaigns, so FSDP1 sides take it after (the
            # order FSDP1's own tests use), and the corpus keeps the bugs under test.
            side = attrs.evolve(side, activation_checkpointing="after")
        mixed_precision = draw(lowered) if fsdp and model.dtype == "float32" else "none"
        if isinstance(side.engine, FSDP1) and side.engine.wraps_listed_modules and model.has_batch_norm:
            # MixedPrecision keeps BatchNorm in float32 only under an auto_wrap_policy, as documented (the unsupported
            # rule fsdp1-mixed-precision-batchnorm-without-auto-wrap-policy): drawn here, the filter would reject it.
            mixed_precision = "none"
        fsdp2 = isinstance(side.engine, FSDP2)
        return attrs.evolve(
            side,
            mixed_precision=mixed_precision,
            offload_params=fsdp2 and draw(offloaded_params),
            # FSDP2's documented workaround for BatchNorm under bfloat16 parameters (corpus bc943706): the supported
            # way is the one fuzzed.
            batchnorm_fp32=fsdp2 and mixed_precision in LOWERS_PARAMETERS,
        )

    @st.composite
    def draw_case(draw):
        model = draw(model_trees)
        storage = draw(storage_choice)
        if isinstance(storage, HfSafetensors) and "Tied" in model.leaf_kinds():
            # safetensors stores no tensors that share memory, as documented (corpus e4382dbd, a limitation): every
            # such save would fail, so a tied model's checkpoint goes through DCP's own files.
            storage = Dcp()
        flattened, mutation = draw(flatten), draw(mutations)
        save, load = zero_routed(draw_side(draw, model), draw_side(draw, model))
        # A checkpoint of the model alone, or DeepSpeed's zero_to_fp32 reading the weights alone: nothing but a
        # compatible load of the model, the optimizer left as built.
        model_only = storage.model_only or zero_to_fp32_route(save, load)
        if model_only:
            mutation = None
        if isinstance(storage, TorchSave) and _pipelined(save):  # its first rank writes the file: one stage's state
            storage = Dcp()
        if isinstance(storage, (TorchSave, DcpToTorchSave)) and _pipelined(load):  # each stage gets every stage's keys
            storage = Dcp()
        # A pipeline's stages each name their own parameters in the nested form's param groups, which DCP keeps one
        # copy of (a limitation, corpus 8f55ed6c): pipelined cases hand the optimizer over flattened, as torchtitan.
        must_flatten = _pipelined(save, load) and target.flatten
        # A flattened full optimizer load is a known DSD bug (88eea24b) whose mask hides every pipelined case with a
        # full load (run O ran 8 pipelined saves in 764 cases): such a load is sharded in 3 cases of 4.
        whole_file = isinstance(storage, (TorchSave, DcpToTorchSave))
        if must_flatten and load.state_dict == "full" and not whole_file and draw(st.integers(0, 3)):
            load = attrs.evolve(load, state_dict="sharded")
        if target.same_state_dict:
            load = attrs.evolve(load, state_dict=save.state_dict)
        save, load = with_options(draw, save, load, storage, must_flatten, mutation)
        # A broadcasting load takes its optimizer state nested (a flattened one fails: known bug 37dad3de).
        flattened = must_flatten or (flattened and not load.broadcast_from_rank0)
        if isinstance(storage, Dcp) and draw(local_choice):
            save, load = with_local(draw, save, load)
        # ignore_frozen_params loads with strict=False, so only a compatible load; where the model
        # has frozen parameters the sides differ in them afterwards, so no continuation check.
        ignoring = mutation is None and load.state_dict != "local" and draw(ignore_frozen) and not model_only
        checks = draw(check_sets)
        if (ignoring and model.frozen_paths()) or model_only:  # the optimizer is not loaded: no training on
            checks = checks - {"continuation"}
        if _pipelined(load):  # rank 0 holds one stage: not the whole state the full-offload check wants there
            checks = checks - {"full-offload"}
        # Drawn last, so that the draws above (and the seeds of named examples) stay as they were.
        stateful = isinstance(storage, Dcp) and storage.api != "legacy"
        training = draw(training_choice) if stateful else None
        if _pipelined(save, load) or model_only:
            training = None  # and one param group (Case._check_pipelines), set below
        wrappers = st.just({}) if users_own else side_wrappers(model)

        def wrapped(side: Side) -> Side:
            fields = draw(wrappers)
            return attrs.evolve(side, **({"meta_init": fields["meta_init"]} if _pipelined(side) else fields))

        save, load = (with_precision(draw, wrapped(side), model) for side in (save, load))
        compatible = mutation is None and not ignoring
        case = Case(
            model=model,
            save=save,
            load=load,
            storage=storage,
            optimizer=draw(optimizer_choice),
            steps=draw(step_counts),
            flatten_optimizer_state_dict=flattened,
            seed=draw(seeds),
            checks=checks,
            ignore_frozen_params=ignoring,
            param_groups=1 if _pipelined(save, load) else draw(group_counts),
            load_mutation=mutation,
            training=training,
        )
        loop = draw(
            loop_choices[
                not copies_its_state_dict(save),
                not copies_its_state_dict(load),
                compatible and load.state_dict != "local" and not load.broadcast_from_rank0 and training is None,
                # a 'local' load may be refused on another topology; the swapped case must be one
                compatible and load.state_dict != "local" and not model_only and not case.why_not_resumable(),
            ]
        )
        if loop.lenient:
            case = attrs.evolve(case, checks=checks - {"continuation"})
        if _pipelined(save, load):
            loop = attrs.evolve(loop, gradless="never", late_group=False)
        if training is not None and training.scheduler in ("cosine", "warmup-cosine"):
            # CosineAnnealingLR and SequentialLR keep the groups they were built over and raise on one added later
            # (measured: ValueError from _update_lr's strict zip; LinearLR and StepLR take it): not promised (71899f51)
            loop = attrs.evolve(loop, late_group=False)
        case = attrs.evolve(case, loop=loop)
        bits = draw(low_bit_choice)
        case = _with_low_bit_optimizer(case, bits) if bits else case
        return with_ranks_from(draw, case)

    def with_ranks_from(draw, case: Case) -> Case:
        """The sides on the ranks from a global rank above 0 (``Loop.ranks_from``: no side's group holds rank 0) in
        about 1 case of 3 where the pool has a rank to spare and nothing needs the default group (a target whose
        sides span the pool, a broadcasting load, FSDP1 where DSD gathers on the default group) or the world's rank 0
        (a full offloaded state dict); CPU sides only."""
        spare = max_world_size - case.world_size
        cuda = "cuda" in (case.save.device, case.load.device)
        # DSD keeps a full offloaded state dict on the world's rank 0 alone, as documented: on a group without it,
        # every rank gets an empty one (a limitation, corpus 9a799b3a and its forms).
        world_rank0 = (case.save.cpu_offload and case.save.state_dict == "full") or "full-offload" in case.checks
        if spare < 1 or target.whole_pool or cuda or world_rank0 or exact_world_size(case) or not draw(offset_choice):
            return case
        return attrs.evolve(case, loop=attrs.evolve(case.loop, ranks_from=draw(st.integers(1, spare))))

    # The rules torch documents live in one place (``unsupported.CASE_RULES``); a
    # filter keeps them there rather than copying them into the draws above.
    # The target's own exclusions likewise (``TargetSupport.refuses``): the draws above leave out
    # what they can, the filter the rest (a local pair the target cannot take, say).
    return draw_case().filter(
        lambda case: excluded(case) is None and not target.refuses(case, world_size=max_world_size, per_side=True)
    )


def _with_low_bit_optimizer(case: Case, bits: int) -> Case:
    """``case`` with torchao's ``bits``-bit AdamW and its model ending in a ``LOW_BIT_WIDTH`` Linear (appended, so
    the drawn leaves keep their paths, which the sides' wrap sets and plans name); unchanged where the root is not
    a Sequential, the model is float64 or the case would be invalid."""
    model = case.model
    if not isinstance(model, Model) or not isinstance(model.root, Sequential) or model.dtype == "float64":
        return case  # no one trains float64 with a low-bit optimizer: its FSDP2 failure (corpus 9f41c132, which
        # bfloat16 shares) would take the runs' time
    root = attrs.evolve(model.root, children=(*model.root.children, Linear(LOW_BIT_WIDTH)))
    try:
        return attrs.evolve(case, model=attrs.evolve(model, root=root), optimizer=LowBitAdamW(bits=bits))
    except ValueError:
        return case
