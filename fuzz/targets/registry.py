"""Naming and finding targets: short names, entry points, ``module:attribute`` specs, faults, framework versions.

A target is named as ``"package.module:attribute"`` or by a short name (``dcp``, the shipped framework
adapters, entry points), either with ``+FAULT`` (``targets.faults``); a class is instantiated with no
arguments, anything else is used as it is.
"""

from __future__ import annotations

import functools
import importlib

from shardfuzz.targets.protocol import CheckpointTarget, ObjectTarget, framework_name, support_of
from shardfuzz.targets.support import TargetSupport

__all__ = [
    "DEFAULT_TARGET",
    "ENTRY_POINT_GROUP",
    "FAULT_SEPARATOR",
    "SHIPPED_TARGETS",
    "framework_of",
    "framework_version",
    "installed_versions",
    "named_targets",
    "resolve_target",
    "spec_of",
    "support_for",
    "unavailable",
]

#: The default target's spec: its public path (corpus entries record it), not the module it is defined in.
DEFAULT_TARGET = "shardfuzz.targets:DcpTarget"


#: Short names for ``--target``: the default and the shipped framework adapters (each an optional
#: extra: ``pip install 'shardfuzz[accelerate]'``). Other packages add theirs through the
#: ``shardfuzz.targets`` entry-point group (``name = "package.module:attribute"``).
SHIPPED_TARGETS = {
    "dcp": DEFAULT_TARGET,
    "accelerate": "shardfuzz.targets.adapters.accelerate:AccelerateFsdpCheckpoint",
    "lightning": "shardfuzz.targets.adapters.lightning:FabricCheckpoint",
    "torchtitan": "shardfuzz.targets.adapters.torchtitan:TitanCheckpointManager",
    "deepspeed": "shardfuzz.targets.adapters.deepspeed:DeepSpeedCheckpoint",
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
        from shardfuzz.targets.faults import with_fault  # faults wrap resolved targets: resolved first

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
        framework = framework_name(resolve_target(spec))
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
