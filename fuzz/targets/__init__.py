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

The public face of the target packages: the protocols (``protocol``), the default target (``dcp``), naming
and resolving targets (``registry``), what a target supports (``support``); the self-test's faults live
in ``mutants`` (state-dict targets) and ``faults`` (object-level targets), the shipped framework adapters
in ``adapters``.
"""

from __future__ import annotations

from shardfuzz.targets.dcp import DcpTarget
from shardfuzz.targets.protocol import (
    CheckpointTarget,
    DeclaresSupport,
    FinishesSave,
    LoadsPartially,
    ObjectTarget,
    RunsFramework,
    ShardsModules,
    framework_name,
    support_of,
)
from shardfuzz.targets.registry import (
    DEFAULT_TARGET,
    ENTRY_POINT_GROUP,
    FAULT_SEPARATOR,
    SHIPPED_TARGETS,
    framework_of,
    framework_version,
    installed_versions,
    named_targets,
    resolve_target,
    spec_of,
    support_for,
    unavailable,
)
from shardfuzz.targets.support import TargetSupport

__all__ = [
    "CheckpointTarget",
    "DcpTarget",
    "DEFAULT_TARGET",
    "DeclaresSupport",
    "ENTRY_POINT_GROUP",
    "FAULT_SEPARATOR",
    "FinishesSave",
    "LoadsPartially",
    "ObjectTarget",
    "RunsFramework",
    "SHIPPED_TARGETS",
    "ShardsModules",
    "TargetSupport",
    "framework_name",
    "framework_of",
    "framework_version",
    "installed_versions",
    "named_targets",
    "resolve_target",
    "spec_of",
    "support_for",
    "support_of",
    "unavailable",
]
