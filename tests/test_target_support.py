"""Targets declare what they support: the strategies draw nothing else, the pool refuses the rest
with the reason, short names and entry points reach targets, and ``TARGET+FAULT`` wraps one."""

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardfuzz.case import FSDP1, FSDP2, SGD, Adam, Case, Linear, Model, Sequential, Side
from shardfuzz.executor.admission import admit
from shardfuzz.findings.campaign_result import through_target
from shardfuzz.strategies import cases, offered_values
from shardfuzz.targets import SHIPPED_TARGETS, named_targets, resolve_target, spec_of, support_for
from shardfuzz.targets.protocol import support_of
from shardfuzz.targets.support import TargetSupport
from shardfuzz.verdict import RankError, Verdict

OBJECT_TARGET = "object_targets:Fsdp2ShardedOnly"

REASONS = {
    name: f"why not {name}"
    for name in ("engines", "state_dicts", "same_state_dict", "options", "flatten", "whole_pool", "hybrid", "min_steps")
}

SUPPORTS = [
    TargetSupport(engines=("FSDP2",), state_dicts=("sharded",), whole_pool=True, options=False, reasons=REASONS),
    TargetSupport(
        engines=("FSDP1", "FSDP2"),
        state_dicts=("full", "sharded"),
        same_state_dict=True,
        flatten=False,
        hybrid=False,
        reasons=REASONS,
    ),
    TargetSupport(engines=("FSDP1", "DDP"), min_steps=2, options=False, reasons=REASONS),
]


DRAWS = st.one_of(*(st.tuples(st.just(support), cases(max_world_size=4, support=support)) for support in SUPPORTS))


# A narrow support filters much of what the trees and sides draw (by design: the draws leave out what they can and
# the filter the rest); with expert leaves drawn one in twelve, derandomized draws crossed the health check's bound.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(DRAWS)
def test_drawn_cases_are_all_supported(drawn):
    support, case = drawn
    assert support.refuses(case, world_size=4) == ""
    assert support.allows_storage(case)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(engines=("FSDP2",)), "excludes \\['engines'\\] without a reason"),
        (dict(whole_pool=True, min_steps=1), "excludes \\['min_steps', 'whole_pool'\\]"),
        (dict(engines=("FSDP3",), reasons={"engines": "x"}), "engines"),
        (dict(state_dicts=("partial",), reasons={"state_dicts": "x"}), "state_dicts"),
        (dict(min_steps=-1), "min_steps"),
    ],
)
def test_bad_declarations_are_refused_up_front(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TargetSupport(**kwargs)


def test_a_malformed_support_attribute_names_the_target():
    class Bad:
        support = ("FSDP2",)

    with pytest.raises(ValueError, match=r"Bad\.support"):
        support_of(Bad())


CASE = Case(
    model=Model(2, Sequential([Linear(3)])),
    save=Side(FSDP2(), (2,)),
    load=Side(FSDP2(), (2,)),
    optimizer=Adam(),
    steps=1,
)


@pytest.mark.parametrize(
    "change, refused_by",
    [
        (dict(save=Side(FSDP1(), (2,))), "engines"),
        (dict(load=Side(FSDP2(), (2,), state_dict="full")), "state_dicts"),
        (dict(load=Side(FSDP2(), (1,))), "whole_pool"),
        (dict(save=Side(FSDP2(), (2,), cpu_offload=True)), "options"),
    ],
)
def test_the_pool_refuses_an_unsupported_case_with_the_reason(change, refused_by):
    assert admit(CASE, world_size=2, target=OBJECT_TARGET) is None
    verdict = admit(attrs.evolve(CASE, **change), world_size=2, target=OBJECT_TARGET)
    assert verdict.status == "unsupported"
    assert f"target-support {refused_by}:" in verdict.detail
    assert support_for(OBJECT_TARGET).reasons[refused_by] in verdict.detail


def test_the_default_target_alone_takes_storage_variants():
    assert support_for("dcp").storages and support_for("shardfuzz.targets:DcpTarget").storages
    assert not support_for("shardfuzz.targets.mutants:StepReset").storages  # a subclass does its own I/O
    assert not support_for("user_target:ForgetsTheStep").storages  # no declaration: everything else


def test_short_names_and_entry_points(monkeypatch):
    assert spec_of("dcp") == "shardfuzz.targets:DcpTarget"
    assert set(SHIPPED_TARGETS) <= set(named_targets())
    with pytest.raises(ValueError, match=r"neither a short name .*accelerate"):
        resolve_target("no-such-framework")

    class Point:
        name, value = "mytrainer", OBJECT_TARGET

    import importlib.metadata

    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [Point()] if group == "shardfuzz.targets" else []
    )
    assert named_targets()["mytrainer"] == OBJECT_TARGET
    assert type(resolve_target("mytrainer")).__name__ == "Fsdp2ShardedOnly"


def test_a_fault_wraps_an_object_target_and_keeps_its_support():
    wrapped = resolve_target(f"{OBJECT_TARGET}+StepCountersReset")
    assert type(wrapped).__name__ == "StepCountersReset"
    assert wrapped.support == support_for(OBJECT_TARGET)
    with pytest.raises(ValueError, match="no such fault 'Nope'"):
        resolve_target(f"{OBJECT_TARGET}+Nope")
    with pytest.raises(ValueError, match="state-dict target"):
        resolve_target("dcp+StepCountersReset")


def test_offered_values_leave_out_what_the_target_excludes():
    everything = offered_values(max_world_size=4)
    assert offered_values(max_world_size=4, support=support_for("dcp")) == everything
    narrowed = offered_values(max_world_size=4, support=support_for(OBJECT_TARGET))
    assert narrowed["save_engine"] == {"fsdp2"} and narrowed["load_state_dict"] == {"sharded"}
    assert narrowed["save_world_size"] == {"4"} and narrowed["load_cpu_offload"] == {"false"}
    assert narrowed["through_save"] == {"fsdp2 sharded"}
    assert "fsdp1 full" in everything["through_load"]


def test_through_target_counts_the_sides_that_reached_the_target():
    case = attrs.evolve(CASE, optimizer=SGD())
    assert through_target(case, Verdict("pass")) == {"through_save": "fsdp2 sharded", "through_load": "fsdp2 sharded"}
    failed_in_load = Verdict("error", errors=(RankError(0, "load", "KeyError", "x"),))
    assert set(through_target(case, failed_in_load)) == {"through_save", "through_load"}
    failed_in_build = Verdict("error", errors=(RankError(0, "build-load", "RuntimeError", "x"),))
    assert set(through_target(case, failed_in_build)) == {"through_save"}
    assert through_target(case, Verdict("error", errors=(RankError(0, "train", "E", "x"),))) == {}
    assert through_target(case, Verdict("unsupported", detail="x")) == {}


def test_shardfuzz_targets_lists_an_unavailable_target_with_its_error(monkeypatch, capsys):
    import importlib.metadata

    from shardfuzz.cli import main

    class Broken:
        name, value = "broken", "no_such_framework_module:Checkpoint"

    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [Broken()] if group == "shardfuzz.targets" else []
    )
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "dcp" in out and "engines FSDP1, FSDP2, DDP, Unsharded" in out
    assert "broken       unavailable: target 'no_such_framework_module:Checkpoint': cannot import" in out
    for name in ("accelerate", "lightning", "torchtitan"):  # each listed, available or not
        assert f"\n  {name} " in out
