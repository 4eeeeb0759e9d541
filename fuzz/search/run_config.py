"""The options of ``shardfuzz run`` as one typed value, built once from the command line.

The runner, the scale-out workers and the campaign read a ``RunConfig``; a worker's
command line is derived from its config (``argv``), not rebuilt by hand, so an
option added here reaches every worker. Each field is named as its option is
(``max_cases`` is ``--max-cases``), which is what lets ``argv`` and ``from_args``
stay generic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs
from attrs import field, frozen
from attrs.converters import optional as optional_converter
from attrs.validators import ge, gt, in_, instance_of, optional

from shardfuzz.case import DEVICES

__all__ = ["RunConfig"]

_PATH = optional(instance_of(Path))


@frozen(kw_only=True)
class RunConfig:
    """What one ``shardfuzz run`` does; the defaults are the command line's."""

    budget: float = field(default=60.0, converter=float, validator=gt(0))
    max_cases: int | None = field(default=None, validator=optional([instance_of(int), ge(1)]))
    seed: int | None = field(default=None, validator=optional(instance_of(int)))
    corpus: Path = field(default=Path("corpus"), converter=Path)
    world_size: int = field(default=4, validator=[instance_of(int), ge(1)])
    target: str | None = field(default=None, validator=optional(instance_of(str)))  # None: DCP
    model: str | None = field(default=None, validator=optional(instance_of(str)))  # None: drawn trees
    device: str = field(default="cpu", validator=in_(DEVICES))
    case_timeout: float | None = field(default=None, validator=optional(gt(0)))
    generic_deadlines: bool = field(default=False, validator=instance_of(bool))
    no_confirm: bool = field(default=False, validator=instance_of(bool))
    # Seconds to explain each new finding in (its neighbours; within the run's budget); 0: not explained.
    explain_budget: float = field(default=120.0, converter=float, validator=ge(0))
    # Seconds one round may spend shrinking its new failures (None: half the budget, at least 30 s); 0: kept as first
    # seen, ``shardfuzz shrink`` later, so a coverage run's cases all go to drawing.
    shrink_budget: float | None = field(default=None, converter=optional_converter(float), validator=optional(ge(0)))
    no_steer: bool = field(default=False, validator=instance_of(bool))
    no_pair_steer: bool = field(default=False, validator=instance_of(bool))
    pairs: Path | None = field(default=None, validator=_PATH)  # write the value pairs reached, one per line
    exit_zero: bool = field(default=False, validator=instance_of(bool))
    database: str | None = field(default=None, validator=optional(instance_of(str)))  # None: the default one
    replay_from: str | None = field(default=None, validator=optional(instance_of(str)))
    report: Path | None = field(default=None, validator=_PATH)
    report_dir: Path | None = field(default=None, validator=_PATH)
    flush_every: float = field(default=30.0, converter=float, validator=gt(0))
    plain: bool = field(default=False, validator=instance_of(bool))
    workers: int = field(default=1, validator=[instance_of(int), ge(1)])
    checkpoint_dir: str | None = field(default=None, validator=optional(instance_of(str)))
    worker_index: int | None = field(default=None, validator=optional(instance_of(int)))
    # Across torch versions: the Pythons whose ranks save and load (None: this one).
    save_python: str | None = field(default=None, validator=optional(instance_of(str)))
    load_python: str | None = field(default=None, validator=optional(instance_of(str)))

    @property
    def across_pythons(self) -> bool:
        """Whether the sides run in other Pythons (a cross-version campaign)."""
        return self.save_python is not None or self.load_python is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """The config of parsed ``shardfuzz run`` options."""
        return cls(**{f.name: getattr(args, f.name) for f in attrs.fields(cls)})

    def argv(self) -> list[str]:
        """The ``shardfuzz run`` options that give this config (those away from their defaults)."""
        out: list[str] = []
        for f in attrs.fields(type(self)):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            out += [flag] if value is True else [flag, str(value)]
        return out

    def for_worker(self, index: int, *, seed: int, report: Path | None) -> RunConfig:
        """The config of scale-out worker ``index`` (of ``--workers``, or a fleet's campaign): its own seed and report,
        flushed often, plain progress, one campaign (the parent writes the merged reports)."""
        return attrs.evolve(
            self,
            seed=seed,
            report=report,
            report_dir=None,
            flush_every=2.0,
            plain=True,
            workers=1,
            worker_index=index,
            checkpoint_dir=None,
        )
