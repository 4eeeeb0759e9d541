"""What a checkpoint target is: the protocols a user implements, each with its calls in order.

A **state-dict target** (``CheckpointTarget``) writes and reads the state dicts that
``torch.distributed.checkpoint.state_dict`` produces for one side. On every rank of a side, for one
case, shardfuzz calls:

1. ``save(state_dict, checkpoint_id=..., process_group=...)`` on the save side's ranks, once, with the
   model's (and optimizer's, and training state's) state dict;
2. ``finish_save()`` where the target declares it (``FinishesSave``): before the ranks meet again, after
   the save side trained on (an asynchronous writer waits for its write here);
3. ``load(state_dict, checkpoint_id=..., process_group=...)`` on the load side's ranks, once, with a state
   dict of the freshly built load side to fill in place; shardfuzz then sets it into the objects.

An **object-level target** (``ObjectTarget``) takes the live model and optimizer instead, as a
framework's checkpoint API does: ``save_objects`` in step 1, ``load_objects`` in step 3, loading into the
objects itself. Either kind may also be a ``ShardsModules`` (it wraps each side's modules itself).

Optional members, each a protocol of its own so that a target declares it by having it:

- ``support`` (``DeclaresSupport``): a ``TargetSupport``, which cases the target runs; without it a
  state-dict target is drawn everything but storage variants, an object-level target no training state;
- ``framework`` (``RunsFramework``): the distribution the target drives (``"accelerate"``), whose installed
  version corpus entries record;
- ``finish_save()`` (``FinishesSave``): see step 2.

Example, a target that writes with DCP and checks nothing else::

    import torch.distributed.checkpoint as dcp

    class MyTarget:
        def save(self, state_dict, *, checkpoint_id, process_group):
            dcp.save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)

        def load(self, state_dict, *, checkpoint_id, process_group):
            dcp.load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)

``shardfuzz run --target mypackage.targets:MyTarget`` fuzzes it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

from shardfuzz.targets.support import EVERYTHING, NO_LOAD_PARTIAL, OBJECT_TARGET_DEFAULT, TargetSupport

__all__ = [
    "CheckpointTarget",
    "DeclaresSupport",
    "FinishesSave",
    "LoadsPartially",
    "ObjectTarget",
    "RunsFramework",
    "ShardsModules",
    "framework_name",
    "support_of",
]


@runtime_checkable
class CheckpointTarget(Protocol):
    """Writes one side's state dict (``save``) and fills another side's in place (``load``), using only the
    ranks of ``process_group``, at ``checkpoint_id`` (a directory every rank of the case sees)."""

    def save(self, state_dict: dict[str, Any], *, checkpoint_id: str, process_group: Any) -> None: ...

    def load(self, state_dict: dict[str, Any], *, checkpoint_id: str, process_group: Any) -> None: ...


@runtime_checkable
class ObjectTarget(Protocol):
    """Takes over a side's whole save or load, as a training framework's checkpoint API does.

    ``side`` describes the side as plain data (``side_description``): ``engine`` (``{"kind": ...,
    **its fields}``), ``mesh_shape``, ``world_size``, ``state_dict`` (``sharded``, ``full`` or
    ``local``), ``state_dict_api``, ``options`` (the ``StateDictOptions`` fields beyond the
    state-dict type), ``flatten_optimizer_state_dict`` and ``device``. At load time ``saved_by``
    describes the side that wrote the checkpoint. ``load_objects`` loads into ``model`` and
    ``optim`` itself; shardfuzz sets nothing afterwards, and judges the objects.
    """

    def save_objects(self, model: Any, optim: Any, *, side: dict, checkpoint_id: str, process_group: Any) -> None: ...

    def load_objects(
        self, model: Any, optim: Any, *, side: dict, saved_by: dict, checkpoint_id: str, process_group: Any
    ) -> None: ...


@runtime_checkable
class ShardsModules(Protocol):
    """Optional: a target with a ``shard`` method also does the wrapping (FSDP1/FSDP2) for each side.

    ``default(module, side, group=..., mesh=...)`` is shardfuzz's own wrapping,
    to delegate to for what the target does not handle.
    """

    def shard(self, module: Any, side: Any, *, group: Any, mesh: Any, default: Any) -> Any: ...


@runtime_checkable
class DeclaresSupport(Protocol):
    """Optional: the cases a target runs (``TargetSupport``); the strategies draw only those."""

    support: TargetSupport


@runtime_checkable
class RunsFramework(Protocol):
    """Optional: the distribution a target drives (``"accelerate"``); its version is recorded with findings."""

    framework: str


@runtime_checkable
class FinishesSave(Protocol):
    """Optional: called once after the save side trained on, before the ranks meet (an async writer's wait)."""

    def finish_save(self) -> None: ...


@runtime_checkable
class LoadsPartially(Protocol):
    """Optional: a lenient load (``Loop.lenient``): fill what the checkpoint holds into ``state_dict`` and leave
    the keys it lacks as they are (DCP's ``DefaultLoadPlanner(allow_partial_load=True)``), where ``load``
    must refuse them. A target without it gets no lenient cases."""

    def load_partial(self, state_dict: dict[str, Any], *, checkpoint_id: str, process_group: Any) -> None: ...


def framework_name(target: object) -> str:
    """The framework ``target`` declares it drives, or ''."""
    return (target.framework or "") if isinstance(target, RunsFramework) else ""


def support_of(target: object) -> TargetSupport:
    """``target.support`` where it declares one; otherwise everything but storage variants (a user's
    target does its own I/O), and for an object-level target (``save_objects``) no training state."""
    if not isinstance(target, DeclaresSupport) or target.support is None:
        if isinstance(target, ObjectTarget):
            return OBJECT_TARGET_DEFAULT
        if isinstance(target, LoadsPartially):
            return EVERYTHING
        return attrs.evolve(EVERYTHING, lenient_loads=False, reasons={"lenient_loads": NO_LOAD_PARTIAL})
    support = target.support
    if not isinstance(support, TargetSupport):
        raise ValueError(f"{type(target).__name__}.support is {support!r}, not a shardfuzz TargetSupport")
    return support
