"""The checkpoint code under test, as a Protocol: DCP by default, or the user's own.

A target receives the state dict that the ``torch.distributed.checkpoint.state_dict``
helpers produce for one side, and must write it (``save``) or fill it in place
(``load``) from ``checkpoint_id`` using only ``process_group``'s ranks. It is the
seam for fault injection too: a target that wraps ``DcpTarget`` and corrupts
what it loads is how the tests prove the oracles can fail.

A framework's checkpoint API takes the live objects instead of a state dict: an
``ObjectTarget`` (``save_objects``/``load_objects``) receives the model and the
optimizer with a plain description of the side, builds its state dicts its own
way and loads straight back into the objects; shardfuzz then judges the objects
as it judges its own loads.

A target is named as ``"package.module:attribute"`` or by a short name (``dcp``, the shipped
framework adapters, entry points); a class is instantiated with no arguments, anything else is
used as it is. A target says which cases it runs with a ``support`` attribute (a
``TargetSupport``); without one it is drawn everything but storage variants.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Protocol, runtime_checkable

from shardfuzz.target_support import TargetSupport, support_of

__all__ = [
    "CheckpointTarget",
    "DcpTarget",
    "DEFAULT_TARGET",
    "ObjectTarget",
    "SHIPPED_TARGETS",
    "ShardsModules",
    "framework_of",
    "framework_version",
    "installed_versions",
    "named_targets",
    "resolve_target",
    "support_for",
    "unavailable",
]

DEFAULT_TARGET = "shardfuzz.targets:DcpTarget"


@runtime_checkable
class CheckpointTarget(Protocol):
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


class DcpTarget:
    """``torch.distributed.checkpoint.save`` / ``load`` (or their older names)."""

    @property
    def support(self) -> TargetSupport:
        # Storage variants replace DCP's own I/O: the default target itself takes them, a subclass
        # (a mutant, a user's wrapper) does its own I/O.
        return TargetSupport(storages=type(self) is DcpTarget)

    def save(self, state_dict, *, checkpoint_id, process_group):
        import torch.distributed.checkpoint as dcp

        if hasattr(dcp, "save"):
            dcp.save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        else:  # torch < 2.2 spelled it save_state_dict with an explicit writer
            dcp.save_state_dict(state_dict, dcp.FileSystemWriter(checkpoint_id), process_group=process_group)

    def load(self, state_dict, *, checkpoint_id, process_group):
        import torch.distributed.checkpoint as dcp

        if hasattr(dcp, "load"):
            dcp.load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        else:
            dcp.load_state_dict(state_dict, dcp.FileSystemReader(checkpoint_id), process_group=process_group)


#: Short names for ``--target``: the default and the shipped framework adapters (each an optional
#: extra: ``pip install 'shardfuzz[accelerate]'``). Other packages add theirs through the
#: ``shardfuzz.targets`` entry-point group (``name = "package.module:attribute"``).
SHIPPED_TARGETS = {
    "dcp": DEFAULT_TARGET,
    "accelerate": "shardfuzz.adapters.accelerate:AccelerateFsdpCheckpoint",
    "lightning": "shardfuzz.adapters.lightning:FabricCheckpoint",
    "torchtitan": "shardfuzz.adapters.torchtitan:TitanCheckpointManager",
}

ENTRY_POINT_GROUP = "shardfuzz.targets"

#: ``TARGET+FAULT``: an object-level target with a fault of ``object_faults.OBJECT_FAULTS`` injected
#: into its path (the self-test's mutants for a framework target).
FAULT_SEPARATOR = "+"


def named_targets() -> dict[str, str]:
    """Every short name: the shipped ones, then those registered through entry points."""
    from importlib.metadata import entry_points

    names = dict(SHIPPED_TARGETS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(point.name, point.value)
    return names


def spec_of(spec: str) -> str:
    """``spec`` as ``module:attribute`` (a short name looked up); a spec with a colon is kept."""
    if ":" in spec:
        return spec
    names = named_targets()
    if spec not in names:
        raise ValueError(
            f"target {spec!r} is neither a short name ({', '.join(sorted(names))}) nor of the form "
            "'package.module:attribute'"
        )
    return names[spec]


def resolve_target(spec: str) -> CheckpointTarget | ObjectTarget:
    """Import a target named by ``spec`` (a short name, ``"module:attribute"``, or either with
    ``+FAULT``); errors name the spec."""
    base, sep, fault = spec.rpartition(FAULT_SEPARATOR)
    if sep:
        from shardfuzz.object_faults import with_fault

        return with_fault(resolve_target(base), fault, spec=spec)
    full = spec_of(spec)
    module_name, sep, attribute = full.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"target {spec!r} is not of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"target {spec!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"target {spec!r}: module {module_name!r} has no attribute {attribute!r}") from None
    target = obj() if isinstance(obj, type) else obj
    if not isinstance(target, (CheckpointTarget, ObjectTarget)):
        raise ValueError(
            f"target {spec!r} has neither save(...) and load(...) methods (a state-dict target) nor "
            "save_objects(...) and load_objects(...) (an object-level target)"
        )
    support_of(target)  # a malformed declaration fails here, naming the target
    return target


def unavailable(spec: str) -> str:
    """Why the target ``spec`` names cannot be had here (its framework not installed, say), or ''."""
    try:
        resolve_target(spec)
    except ValueError as exc:
        return str(exc)
    return ""


def installed_versions(distributions) -> dict[str, str]:
    """``{distribution: version}`` for those of ``distributions`` installed here."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in distributions:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def framework_of(spec: str) -> dict[str, str]:
    """``{"accelerate": "1.15.0"}``: the framework the target runs and its installed version; empty for
    a target that runs no framework (DCP, a user's own code) or cannot be imported here."""
    try:
        framework = getattr(resolve_target(spec), "framework", None)
    except ValueError:
        return {}
    return installed_versions([framework]) if framework else {}


def framework_version(spec: str) -> str:
    """``"accelerate 1.15.0"``, or '' (see ``framework_of``)."""
    return " ".join(f"{name} {version}" for name, version in framework_of(spec).items())


@functools.lru_cache(maxsize=32)
def support_for(spec: str) -> TargetSupport:
    """The ``TargetSupport`` of the target ``spec`` names (resolved once per process)."""
    return support_of(resolve_target(spec))
