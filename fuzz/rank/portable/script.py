"""The part of an exported reproducer that is not a torch step: the order of the steps and the judge.

``export`` builds a script from four sources, none a second copy of the round-trip: the case's values (constants,
and the model as ``nn.Sequential(...)`` literals, in place of the ``# --- the case`` block below); the definitions
of ``layers``, ``sharding``, ``rank_steps`` and ``bits``, copied as they are; the checkpoint I/O (``storage.py``'s
classes, or an import of the user's target); and the functions of ``RUN`` below, then those of ``launcher.py``,
copied as they are. This is a real module so that those functions are linted and their names checked; its
constants are a placeholder case (one rank, one step) that ``tests/test_export.py`` compares with what ``export``
writes, so the two cannot drift apart.

The run follows ``roundtrip.run_case`` phase for phase; it judges with a plain bitwise comparison (``bits``) and
raises at the first difference, where the pool's oracles collect every mismatch with its kind.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist

from shardfuzz.rank.portable.bits import as_lists, first_bit_difference, first_difference_beyond
from shardfuzz.rank.portable.handoff import one_torch_hyperparameters, read_handoff, write_handoff
from shardfuzz.rank.portable.layers import layer_class
from shardfuzz.rank.portable.optimizers import add_late_group, make_optimizer
from shardfuzz.rank.portable.sharding import built, data_rank, device_mesh, shard_module, wrap_and_shard
from shardfuzz.rank.portable.steps import (
    api_parity_pairs,
    gather_full,
    get_side_state,
    make_app_state,
    model_state,
    offloaded_full_state,
    offloaded_shapes,
    set_side_state,
    state_dict_options,
    train_steps,
)
from shardfuzz.rank.portable.zero import engine_over

__all__ = ["CASE_CONSTANTS", "CASE_FUNCTIONS", "RUN"]

# --- the case: export writes these (a placeholder case here) ---------------------------------
WORLD_SIZE = 1
RANKS_FROM = 0
SAVE_RANKS = 1
LOAD_RANKS = 1
SAVE_MESH = (1,)
LOAD_MESH = (1,)
SEED = 0
STEPS = 1
CONTINUE_STEPS = 2
GRADLESS = "never"
LATE_GROUP = False
BATCH_SIZE = 2
SAME_BATCH = False
INPUT_WIDTH = 1
NUM_EMBEDDINGS = 0
DTYPE = "float32"
COMPUTE_DTYPE = "float32"
SAVE_ENGINE: dict = {"kind": "Unsharded"}
LOAD_ENGINE: dict = {"kind": "Unsharded"}
SAVE_WRAP: list[str] = []
LOAD_WRAP: list[str] = []
SAVE_WRAP_INNERMOST_FIRST: list[str] = []
LOAD_WRAP_INNERMOST_FIRST: list[str] = []
MODULE_TYPE_CLASSES: dict[str, str] = {}
SAVE_WRAPPERS: dict = dict(activation_checkpointing="none", checkpointed=[], compiled=False, meta_init=False)
SAVE_WRAPPERS.update(mixed_precision="none", offload_params=False, batchnorm_fp32=False)
LOAD_WRAPPERS: dict = dict(SAVE_WRAPPERS)
SAVE_OPTIMIZER: tuple = ("SGD", [{"lr": 0.01}], False, False)
LOAD_OPTIMIZER: tuple = ("SGD", [{"lr": 0.02}], False, False)
FLATTEN_OPTIMIZER_STATE_DICT = True
SAVE_STATE_DICT = "sharded"
LOAD_STATE_DICT = "sharded"
SAVE_API = "combined"
LOAD_API = "combined"
SAVE_OPTIONS: dict = {}
LOAD_OPTIONS: dict = {}
LOCAL_MAY_REFUSE = False
KEPT_ON_LOAD: list[str] = []
SAVE_HELD = False
LOAD_HELD = False
RESUMES = 1
LENIENT = False
SAVES_MODEL_ONLY = LOADS_MODEL_ONLY = False
ASYNC_SAVE = SECOND_SAVE = False
CHECKS: set[str] = set()
LOAD_MUTATION: str | None = None
SAME_SHARDING = True
CONTINUATION_TOLERANCE = (1e-4, 1e-6)
ACROSS_TORCHES_TOLERANCE = (1e-3, 1e-4)
NO_TOLERANCE_DTYPES = ("bfloat16",)
OBJECT_TARGET = False
SAVE_SIDE: dict = {}
LOAD_SIDE: dict = {}
TRAINING: dict | None = None
SAVE_TORCH = LOAD_TORCH = ""  # the torches it was found with (one torch: both the same)
HANG_SECONDS = float(os.environ.get("SHARDFUZZ_HANG_SECONDS", 45))
PHASE = ["start"]  # this rank's phase, for the hang watchdog


def build_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, 1))


def build_load_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, 1))


def user_batch():
    """A user's model's input function (``--model``); None: the inputs shardfuzz draws for its own trees."""
    return None


def save(state, checkpoint_dir, group):
    raise NotImplementedError("export writes the case's checkpoint I/O here")


def finish_save():
    pass


def load(state, checkpoint_dir, group):
    raise NotImplementedError("export writes the case's checkpoint I/O here")


def load_partial(state, checkpoint_dir, group):
    raise NotImplementedError("export writes the case's checkpoint I/O here")


_target: Any = None  # the checkpoint code: export writes it with save, finish_save and load


# --- the run: copied into every script as it is ---------------------------------------------


def options(kind, extra):
    """The ``StateDictOptions`` of a side with state-dict type ``kind`` and further fields ``extra``."""
    return state_dict_options(full=kind == "full", flatten=FLATTEN_OPTIMIZER_STATE_DICT, extra=extra)


def train(model, optim, app, rank, continuation=False, first=None):
    """STEPS steps on data seeded by (SEED, step, rank); for continuation, CONTINUE_STEPS more with the
    same batch on every rank; from ``first`` on (a resumed side), STEPS steps (at least one). A BatchNorm's
    running statistics are per-rank buffers: SAME_BATCH then."""
    if first is not None:
        count = max(STEPS, 1)
    else:
        first, count = (STEPS, CONTINUE_STEPS) if continuation else (0, STEPS)
    data = dict(seed=SEED, batch_size=BATCH_SIZE, input_width=INPUT_WIDTH, num_embeddings=NUM_EMBEDDINGS, dtype=DTYPE)
    loop = dict(app=app, make_batch=user_batch(), gradless=GRADLESS, same_batch=continuation or SAME_BATCH)
    train_steps(model, optim, first=first, count=count, rank=rank, **data, **loop)


def shard(model, engine, wrap, innermost_first, group, mesh, wrappers, seed):
    classes = {name: layer_class(cls) for name, cls in MODULE_TYPE_CLASSES.items()}

    def sharded(module):
        return shard_module(
            module,
            engine,
            wrap=wrap,
            innermost_first=innermost_first,
            group=group,
            mesh=mesh,
            device="cpu",
            classes=classes,
            mixed_precision=wrappers["mixed_precision"],
            offload_params=wrappers["offload_params"],
            batchnorm_fp32=wrappers.get("batchnorm_fp32", False),
        )

    return wrap_and_shard(model, wrappers, sharded, engine=engine["kind"], seed=seed)


def differences(expected, actual, close=None):
    """Keys missing or extra, and values that differ in dtype, shape or any bit (or beyond ``close``)."""
    found = [f"missing after load: {k}" for k in sorted(set(expected) - set(actual))]
    found += [f"extra after load: {k}" for k in sorted(set(actual) - set(expected))]
    for key in sorted(set(expected) & set(actual)):
        e, a = expected[key], actual[key]
        if isinstance(e, torch.Tensor) and isinstance(a, torch.Tensor):
            if e.dtype != a.dtype or e.shape != a.shape:
                found.append(f"{key}: {e.dtype}{list(e.shape)} saved, {a.dtype}{list(a.shape)} loaded")
                continue
            if close is not None and e.is_floating_point():
                index = first_difference_beyond(e, a, *close)
            else:
                index = first_bit_difference(e, a)
            if index is not None:
                found.append(f"{key} at {list(index)}: saved {e[index].item()!r}, loaded {a[index].item()!r}")
        elif as_lists(e) != as_lists(a):
            found.append(f"{key}: saved {e!r}, loaded {a!r}")
    return found


def check(found, what):
    if found:
        raise AssertionError(f"{what}: {len(found)} difference(s); first: {found[0]}")


def api_parity(model, optim, group):
    """Two APIs over the same state must agree."""
    for what, ours, theirs in api_parity_pairs(model, optim, engine=SAVE_ENGINE["kind"], group=group):
        check(differences(ours, theirs), f"api-parity: {what}")


def full_offload(model, optim, rank, actual):
    """full_state_dict + cpu_offload: rank 0 holds every key, full-shaped, on CPU; other ranks nothing."""
    held = offloaded_full_state(model, optim)
    if rank != 0:
        check([f"rank {rank} holds {k}" for k in held], "full-offload")
        return
    wanted = offloaded_shapes(actual)
    found = [f"missing on rank 0: {k}" for k in sorted(set(wanted) - set(held))]
    found += [f"{k} on {device}" for k, (_, device) in held.items() if device != "cpu"]
    found += [f"{k} shaped {list(shape)}" for k, (shape, _) in held.items() if k in wanted and shape != wanted[k]]
    check(found, "full-offload")


def state_dict_of(side):
    """The state-dict type, API and further ``StateDictOptions`` fields of ``side`` ("save" or "load")."""
    return (SAVE_STATE_DICT, SAVE_API, SAVE_OPTIONS) if side == "save" else (LOAD_STATE_DICT, LOAD_API, LOAD_OPTIONS)


def save_from(model, optim, app, checkpoint_dir, group, held=None, side="save"):
    """The state of ``side`` (``held``: the model state dict it took at build) written by the checkpoint code; or
    the object-level target's own save of the objects (it builds its state dicts from them itself)."""
    if OBJECT_TARGET:
        description = SAVE_SIDE if side == "save" else LOAD_SIDE
        _target.save_objects(model, optim, side=description, checkpoint_id=checkpoint_dir, process_group=group)
        return
    kind, api, extra = state_dict_of(side)
    opts = options(kind, extra)
    if SAVES_MODEL_ONLY:  # a format of tensors alone: the model's state dict
        state = {"model": held or model_state(model, kind=kind, options=opts)}
    else:
        state = get_side_state(model, optim, kind=kind, api=api, options=opts, app=app, held_model=held)
    save(state, checkpoint_dir, group)


def load_into(model, optim, app, checkpoint_dir, group, rank, held=None, side="load"):
    """The state dict of ``side`` ("load"; "save" for the second load of a case that resumes twice) as the
    template (``held``: the one it took at build), filled from the checkpoint, set into the model; or the
    object-level target's own load into the objects. A lenient load leaves what the checkpoint lacks."""
    kind, api, extra = state_dict_of(side)
    into, saved_by = (LOAD_SIDE, SAVE_SIDE) if side == "load" else (SAVE_SIDE, LOAD_SIDE)
    if OBJECT_TARGET:
        return _target.load_objects(
            model, optim, side=into, saved_by=saved_by, checkpoint_id=checkpoint_dir, process_group=group
        )
    opts = options(kind, extra)
    if LOADS_MODEL_ONLY and side == "load":  # the model alone; the optimizer stays as built
        state = {"model": held or model_state(model, kind=kind, options=opts)}
    else:
        state = get_side_state(model, optim, kind=kind, api=api, options=opts, app=app, held_model=held)
    (load_partial if LENIENT and side == "load" else load)(state, checkpoint_dir, group)
    set_side_state(model, optim, state, kind=kind, api=api, options=opts, rank=rank)


def groups_and_meshes(rank):
    """Each side's group, the group an async save writes on, and each side's mesh (None off it): every rank
    makes them, in the same order (2-D meshes' groups are collective on the whole world)."""
    PHASE[0] = "groups"
    groups = {}
    for n in sorted({SAVE_RANKS, LOAD_RANKS}):  # a side's ranks: the global ones from RANKS_FROM
        whole = n == WORLD_SIZE and not RANKS_FROM
        groups[n] = dist.group.WORLD if whole else dist.new_group(list(range(RANKS_FROM, RANKS_FROM + n)))
    PHASE[0] = "meshes"  # every rank makes them, in the same order: 2-D meshes' groups are collective
    saving = list(range(RANKS_FROM, RANKS_FROM + SAVE_RANKS))  # async_save's collectives run in a thread: own group
    checkpoint_groups = [dist.new_group(saving) for _ in range(1 + SECOND_SAVE)] if ASYNC_SAVE else [groups[SAVE_RANKS]]
    meshes = {}
    for shape, n in ((SAVE_MESH, SAVE_RANKS), (LOAD_MESH, LOAD_RANKS)):
        if shape not in meshes:
            meshes[shape] = device_mesh(shape, groups[n], rank=rank, first=RANKS_FROM)
    return groups, checkpoint_groups, meshes


def run_save_side(rank, checkpoint_dir, phase, group, mesh, checkpoint_groups):
    """Build, train, gather and save on a save rank (then continue training, and compare two APIs, where the
    case checks those). Returns the saved state and the state after continuing (None without)."""
    expected_after = None
    PHASE[0] = "build-save"
    spec = built(build_model, SEED, meta=SAVE_WRAPPERS["meta_init"])
    model = shard(spec, SAVE_ENGINE, SAVE_WRAP, SAVE_WRAP_INNERMOST_FIRST, group, mesh, SAVE_WRAPPERS, SEED)
    optim = make_optimizer(model, *SAVE_OPTIMIZER)
    model, optim = engine_over(model, optim, SAVE_ENGINE, batch_size=BATCH_SIZE, group=group)  # DeepSpeed's on ZeRO
    app = make_app_state(optim, TRAINING, engine=SAVE_ENGINE["kind"], group=group)
    save_options = options(SAVE_STATE_DICT, SAVE_OPTIONS)
    held = model_state(model, kind=SAVE_STATE_DICT, options=save_options) if SAVE_HELD else None  # before training
    PHASE[0] = "train"
    train(model, optim, app, data_rank(SAVE_ENGINE, SAVE_MESH, rank))
    PHASE[0] = "gather-saved"
    expected = gather_full(model, optim, app)
    PHASE[0] = "save"
    save_from(model, optim, app, checkpoint_dir, checkpoint_groups[0], held)
    if LATE_GROUP:  # saved: the loop unfreezes a module from here on
        PHASE[0] = "late-group"
        add_late_group(optim, model)
    continued = "continuation" in CHECKS and LOAD_MUTATION is None
    if continued or SECOND_SAVE:
        PHASE[0] = "continue-saved"
        train(model, optim, app, data_rank(SAVE_ENGINE, SAVE_MESH, rank), continuation=True)
        expected_after = gather_full(model, optim, app) if continued else None
    if SECOND_SAVE:  # before the first is waited for: an async one is in flight, each on a group of its own
        PHASE[0] = "save-second"
        save_from(model, optim, app, os.path.join(checkpoint_dir, "second"), checkpoint_groups[-1], held)
    del held
    if "api-parity" in CHECKS:
        PHASE[0] = "api-parity"
        api_parity(model, optim, group)
    PHASE[0] = "finish-save"
    finish_save()
    del model, optim, app
    if phase == "save" and rank == 0:
        write_handoff(checkpoint_dir, expected, expected_after)
        print(f"saved under torch {torch.__version__}; now run --phase load on the same --dir")
    return expected, expected_after


def run_load_side(rank, checkpoint_dir, group, mesh, saved_by, expected, expected_after):
    """Build the load side and load into it; rank 0 then judges the loaded state (``judge_loaded``). With a
    mutated model, the load must raise instead. Returns the load side's objects where the case resumes twice."""
    PHASE[0] = "build-load"
    build = build_load_model if LOAD_MUTATION is not None or LENIENT else build_model
    spec = built(build, SEED + 1, meta=LOAD_WRAPPERS["meta_init"])
    model = shard(spec, LOAD_ENGINE, LOAD_WRAP, LOAD_WRAP_INNERMOST_FIRST, group, mesh, LOAD_WRAPPERS, SEED + 1)
    optim = make_optimizer(model, *LOAD_OPTIMIZER)
    model, optim = engine_over(model, optim, LOAD_ENGINE, batch_size=BATCH_SIZE, group=group)
    app = make_app_state(optim, TRAINING, engine=LOAD_ENGINE["kind"], group=group)
    if LOAD_MUTATION is not None:
        PHASE[0] = "load-incompatible"
        try:
            load_into(model, optim, app, checkpoint_dir, group, rank)
        except BaseException as exc:  # the loud error wanted
            print(f"rank {rank}: the incompatible load raised {type(exc).__name__}, as it should")
        else:
            raise AssertionError(
                f"loud-incompatible-load: loading into a model with a {LOAD_MUTATION} mutation raised nothing"
            )
        return
    load_options = options(LOAD_STATE_DICT, LOAD_OPTIONS)
    held = model_state(model, kind=LOAD_STATE_DICT, options=load_options) if LOAD_HELD else None
    before = gather_full(model, optim, app) if KEPT_ON_LOAD or LOADS_MODEL_ONLY else {}
    PHASE[0] = "load"
    try:
        load_into(model, optim, app, checkpoint_dir, group, rank, held=held)
    except BaseException as exc:
        if not LOCAL_MAY_REFUSE:
            raise
        print(f"rank {rank}: the 'local' checkpoint was refused on another topology ({type(exc).__name__}): allowed")
        os._exit(0)
    PHASE[0] = "gather-loaded"
    actual = gather_full(model, optim, app)
    actual_after = None
    if "full-offload" in CHECKS:
        PHASE[0] = "full-offload"
        full_offload(model, optim, rank, actual)
    if LATE_GROUP:  # judged as loaded: from here on the loop trains the unfrozen module too
        PHASE[0] = "late-group"
        add_late_group(optim, model)
    if "continuation" in CHECKS:
        PHASE[0] = "continue-loaded"
        train(model, optim, app, data_rank(LOAD_ENGINE, LOAD_MESH, rank), continuation=True)
        actual_after = gather_full(model, optim, app)
    if rank == 0:
        judge_loaded(expected, actual, before, expected_after, actual_after, saved_by)
    return (model, optim, app, held) if RESUMES > 1 else None


def resume(rank, checkpoint_dir, groups, meshes, loaded):
    """The second round-trip of a case that resumes twice: the load side (``loaded``: its objects, on its ranks)
    trains on and saves again with them; a fresh build of the save side's layout loads that; rank 0 compares."""
    second_dir = os.path.join(checkpoint_dir, "resumed")
    expected = None
    if loaded is not None:
        model, optim, app, held = loaded
        PHASE[0] = "train-resumed"
        train(model, optim, app, data_rank(LOAD_ENGINE, LOAD_MESH, rank), first=STEPS + CONTINUE_STEPS)
        PHASE[0] = "gather-saved-again"
        expected = gather_full(model, optim, app)
        PHASE[0] = "save-again"
        save_from(model, optim, app, second_dir, groups[LOAD_RANKS], held, side="load")
        finish_save()
        del model, optim, app, held, loaded
    PHASE[0] = "barrier-resumed"
    dist.barrier()
    if rank >= SAVE_RANKS:
        return
    PHASE[0] = "build-resumed"  # the save side's layout, from another seed and the load side's hyperparameters
    spec = built(build_model, SEED + 2, meta=SAVE_WRAPPERS["meta_init"])
    group = groups[SAVE_RANKS]
    wrap, innermost, mesh = SAVE_WRAP, SAVE_WRAP_INNERMOST_FIRST, meshes[SAVE_MESH]
    model = shard(spec, SAVE_ENGINE, wrap, innermost, group, mesh, SAVE_WRAPPERS, SEED + 2)
    optim = make_optimizer(model, *LOAD_OPTIMIZER)
    if LATE_GROUP:  # a resume past the point where the loop added the group: the checkpoint holds it
        add_late_group(optim, model)
    app = make_app_state(optim, TRAINING, engine=SAVE_ENGINE["kind"], group=group)
    PHASE[0] = "load-resumed"
    load_into(model, optim, app, second_dir, group, rank, side="save")
    PHASE[0] = "gather-resumed"
    actual = gather_full(model, optim, app)
    if rank == 0:
        check(differences(expected, actual), "resumed-state")


def judge_loaded(expected, actual, before, expected_after, actual_after, saved_by):
    """Rank 0's judgement: the loaded state against the saved one, bit for bit, and the states after
    continuing, as ``oracles.continuation`` judges them. Across two torches, less what one torch holds and
    the other cannot."""
    PHASE[0] = "compare"
    across = saved_by != str(torch.__version__)  # saved under another torch (--phase save, then load)
    if across:  # hyperparameters one torch has and the other cannot hold: not the checkpoint's
        one_torch = one_torch_hyperparameters(expected, actual)
        expected = {k: v for k, v in expected.items() if k not in one_torch}
        actual = {k: v for k, v in actual.items() if k not in one_torch}
    if LOADS_MODEL_ONLY:  # the model alone was loaded: the optimizer must be as it was built
        expected = {k: v for k, v in expected.items() if not k.startswith("optim.")}
        expected.update({k: v for k, v in before.items() if k.startswith("optim.")})
    check(differences({**expected, **{k: before[k] for k in KEPT_ON_LOAD}}, actual), "complete-state")
    if "continuation" in CHECKS and (  # as oracles.continuation judges it
        (SAME_SHARDING and not across) or COMPUTE_DTYPE not in NO_TOLERANCE_DTYPES
    ):
        close = ACROSS_TORCHES_TOLERANCE if across else None if SAME_SHARDING else CONTINUATION_TOLERANCE
        if across:  # the model and the counters: the moments went bit for bit above (oracles.py)
            moments = {
                k for k, v in expected_after.items() if k.startswith("optim.") and torch.is_tensor(v)
                and v.is_floating_point() and not k.endswith(".step")
            } | one_torch  # fmt: skip
            expected_after = {k: v for k, v in expected_after.items() if k not in moments}
            actual_after = {k: v for k, v in actual_after.items() if k not in moments}
        check(differences(expected_after, actual_after, close), "continuation")


def round_trip(rank, checkpoint_dir, phase="both"):
    """This rank's part: save on ranks < SAVE_RANKS, load on ranks < LOAD_RANKS, compare on rank 0.

    ``phase`` "save" or "load": that half only, as two runs (under two torches) on one folder; the
    save run's rank 0 leaves the saved state beside the checkpoint for the load run's. Ranks count from the
    global rank RANKS_FROM (those below it come last, outside both sides)."""
    rank = (rank - RANKS_FROM) % WORLD_SIZE
    groups, checkpoint_groups, meshes = groups_and_meshes(rank)
    try:
        expected = expected_after = None
        saved_by = str(torch.__version__)
        if rank < SAVE_RANKS and phase != "load":
            expected, expected_after = run_save_side(
                rank, checkpoint_dir, phase, groups[SAVE_RANKS], meshes[SAVE_MESH], checkpoint_groups
            )
        if phase == "save":
            return
        if phase == "both":
            PHASE[0] = "barrier"
            dist.barrier()
        elif rank == 0:
            saved_by, expected, expected_after = read_handoff(checkpoint_dir)
        loaded = None
        if rank < LOAD_RANKS:
            loaded = run_load_side(
                rank, checkpoint_dir, groups[LOAD_RANKS], meshes[LOAD_MESH], saved_by, expected, expected_after
            )
        if RESUMES > 1 and phase == "both":
            resume(rank, checkpoint_dir, groups, meshes, loaded)
    except BaseException as exc:
        print(f"REPRODUCED on rank {rank} in {PHASE[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # peers may be blocked in a collective: do not wait for them
    if rank == 0:
        print("did not reproduce: the state round-tripped bit for bit")


#: The case's values, as export writes them (each a module constant above).
CASE_CONSTANTS = [name for name in list(globals()) if name.isupper() and name != "PHASE"]
#: The case's functions export writes: the model (as literals) and the checkpoint I/O.
CASE_FUNCTIONS = ["build_model", "build_load_model", "user_batch", "save", "finish_save", "load", "load_partial"]
#: The functions copied into every script as they are, in this order.
RUN = ["options", "train", "shard", "differences", "check", "api_parity", "full_offload", "state_dict_of"]
RUN += ["save_from", "load_into", "groups_and_meshes", "run_save_side", "run_load_side", "judge_loaded", "resume"]
RUN += ["round_trip"]
