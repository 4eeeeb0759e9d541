"""The options ``shardfuzz fleet`` adds to ``shardfuzz run``'s: where the cluster is, how many campaigns, what each
declares to Ray's scheduler."""

from __future__ import annotations

import argparse

import attrs
from attrs import field, frozen
from attrs.validators import ge, instance_of, optional

from shardfuzz.commands._arg_types import count, non_negative_count, non_negative_number

__all__ = ["FleetOptions", "add_fleet_options"]


@frozen(kw_only=True)
class FleetOptions:
    """How a fleet is placed; ``cpus_per_campaign`` None: the campaign's world size (one core per rank)."""

    campaigns: int = field(default=2, validator=[instance_of(int), ge(1)])
    address: str | None = field(default=None, validator=optional(instance_of(str)))  # None: a local cluster
    cpus_per_campaign: float | None = field(default=None, validator=optional(ge(0)))
    gpus_per_campaign: float = field(default=0.0, converter=float, validator=ge(0))
    max_restarts: int = field(default=3, validator=[instance_of(int), ge(0)])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FleetOptions:
        return cls(**{f.name: getattr(args, f.name) for f in attrs.fields(cls)})

    def cpus(self, world_size: int) -> float:
        return float(world_size) if self.cpus_per_campaign is None else self.cpus_per_campaign


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """The fleet's own options, as a group of ``parser`` (which has ``shardfuzz run``'s too)."""
    fleet = parser.add_argument_group("the fleet (Ray)")
    fleet.add_argument(
        "--address",
        default=None,
        help="the Ray cluster to join, as `ray start` printed it (HOST:6379, or auto); run the command on one of its "
        "nodes (default: start a local cluster for this run)",
    )
    fleet.add_argument("--campaigns", type=count, default=2, help="campaigns at once, each its own actor (default 2)")
    fleet.add_argument(
        "--cpus-per-campaign",
        type=non_negative_number,
        default=None,
        help="CPUs each campaign declares to Ray (default: --world-size, one core per rank)",
    )
    fleet.add_argument(
        "--gpus-per-campaign",
        type=non_negative_number,
        default=0.0,
        help="GPUs each campaign declares to Ray (with --device cuda: one per rank that holds a GPU; default 0)",
    )
    fleet.add_argument(
        "--max-restarts",
        type=non_negative_count,
        default=3,
        help="times Ray restarts a campaign whose actor or node died, with what is left of the budget (default 3)",
    )
