"""``shardfuzz targets``: every target a short name reaches, with its framework's version and
what it supports, or why it cannot be had here."""

from __future__ import annotations

import argparse
import json

from attrs import asdict, frozen

__all__ = ["TargetInfo", "main", "target_infos"]


def main(args: argparse.Namespace) -> int:
    """Print the targets (``--json``: as a list of objects), each with its engines and what it leaves out."""
    import torch

    infos = target_infos()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    print(f"targets on torch {torch.__version__} (--target NAME):")
    for info in infos:
        if not info.available:
            version = f" ({info.framework} {info.version} installed)" if info.version else ""
            print(f"  {info.name:12} unavailable{version}: {info.error}")
            continue
        framework = f"{info.framework} {info.version}" if info.framework else f"torch {info.version}"
        print(f"  {info.name:12} {framework}: {info.kind}-level, {info.spec}")
        print(f"  {'':12} engines {', '.join(info.engines)}")
        for what, why in info.excludes.items():
            print(f"  {'':12} - {what}: {why}")
    return 0


@frozen
class TargetInfo:
    """One target as ``shardfuzz targets`` lists it."""

    name: str
    spec: str
    kind: str  # "object" (takes the live objects), "state-dict", or "" where unavailable
    framework: str  # the distribution whose code it runs ("" for DCP itself)
    version: str  # the installed framework's version, or torch's for DCP
    available: bool
    error: str  # why it is unavailable: the import's own error
    engines: tuple[str, ...]
    excludes: dict[str, str]  # what it leaves out: why

    def as_dict(self) -> dict:
        return asdict(self)


def _version(distribution: str) -> str:
    from shardfuzz.targets import installed_versions

    return installed_versions([distribution]).get(distribution, "")


def target_infos() -> list[TargetInfo]:
    """One ``TargetInfo`` per short name; the engines are those the installed torch offers too."""
    from shardfuzz.capabilities import capabilities
    from shardfuzz.targets import (
        SHIPPED_TARGETS,
        ObjectTarget,
        framework_name,
        named_targets,
        resolve_target,
        support_of,
    )
    from shardfuzz.targets.support import ENGINE_KINDS

    offered = capabilities().engines
    infos = []
    for name, spec in named_targets().items():
        framework = name if name in SHIPPED_TARGETS and name != "dcp" else ""  # a shipped adapter's framework
        try:
            target = resolve_target(spec)
        except Exception as exc:  # an adapter whose framework is missing or broken: say why, list the rest
            version = _version(framework) if framework else ""
            hint = f" (pip install 'shardfuzz[{name}]')" if framework and not version else ""
            infos.append(TargetInfo(name, spec, "", framework, version, False, f"{exc}{hint}", (), {}))
            continue
        framework = framework_name(target) or framework
        support = support_of(target)
        infos.append(
            TargetInfo(
                name=name,
                spec=spec,
                kind="object" if isinstance(target, ObjectTarget) else "state-dict",
                framework=framework,
                version=_version(framework) if framework else _version("torch"),
                available=True,
                error="",
                engines=tuple(
                    kind for kind in (support.engines or ENGINE_KINDS) + support.load_engines if kind.lower() in offered
                ),
                excludes=support.summary(),
            )
        )
    return infos
