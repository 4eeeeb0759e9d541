"""Steering's masks: learned from the hits and the other cases, narrowed by probes that miss."""

from shardfuzz.case import DDP, FSDP2, SGD, Adam, Case, Linear, Model, Sequential, Side
from shardfuzz.search.steering import MIN_PRECISION_COSTLY, PROBE_EVERY, Steering, _probe, separating_conditions


def test_the_fewest_shared_conditions_that_set_the_hits_apart():
    candidates = {"engine": "fsdp2", "optimizer": "adam", "steps": "1"}
    others = [
        {"engine": "ddp", "optimizer": "adam", "steps": "1"},
        {"engine": "fsdp1", "optimizer": "adam", "steps": "1"},
        {"engine": "fsdp2", "optimizer": "sgd", "steps": "1"},
    ]
    assert separating_conditions(candidates, 3, others) == {"engine": "fsdp2", "optimizer": "adam"}


def test_no_other_case_to_tell_apart_keeps_every_shared_condition():
    candidates = {"engine": "fsdp2", "optimizer": "adam"}
    assert separating_conditions(candidates, 1, []) == candidates


def test_a_mask_that_would_hide_more_misses_than_hits_is_dropped():
    candidates = {"engine": "fsdp2"}
    others = [{"engine": "fsdp2"}] * 3  # the bug needs something no dimension names
    assert separating_conditions(candidates, 2, others) is None
    assert separating_conditions(candidates, 3, others) == candidates


def test_a_condition_that_admits_several_values_rules_out_only_the_cases_outside_them():
    # A triaged bug's conditions may admit several values ('2|3|4'), which no case's value equals: counted as
    # ruling out every other case, such a condition alone made the mask, and it then hid every draw of those
    # values (a 600 s run masked 294 draws under 'save_world_size: 2|3|4' alone).
    candidates = {"world_size": "2|3|4", "engine": "fsdp1"}
    others = [
        {"world_size": "2", "engine": "fsdp2"},
        {"world_size": "3", "engine": "ddp"},
        {"world_size": "1", "engine": "fsdp1"},
    ]
    assert separating_conditions(candidates, 3, others) == candidates
    assert separating_conditions(candidates, 1, others + [{"world_size": "4", "engine": "fsdp1"}] * 2) is None


def _case(load_engine, optimizer=None, steps=1):
    optimizer = SGD() if optimizer is None else optimizer
    return Case(
        model=Model(1, Sequential([Linear(2)])),
        save=Side(DDP(), (1,)),
        load=Side(load_engine, (1,)),
        optimizer=optimizer,
        steps=steps,
    )


def test_a_mask_forms_after_k_hits_and_a_hang_masks_at_once():
    steering = Steering(after=2)
    steering.observe(_case(DDP()), None)
    steering.observe(_case(FSDP2()), "bug")
    assert not steering.masks
    steering.observe(_case(FSDP2(), steps=2), "bug")
    assert steering.masks["bug"] == {"load_engine": "fsdp2"}
    hanging = Steering(after=3)
    hanging.observe(_case(DDP()), None)
    hanging.observe(_case(FSDP2()), "hang", costly=True)
    assert hanging.masks["hang"]["load_engine"] == "fsdp2"


def test_a_probe_that_misses_narrows_the_mask():
    steering = Steering(after=1)
    steering.observe(_case(DDP()), None)
    steering.observe(_case(FSDP2(), optimizer=Adam()), "bug")
    (mask,) = steering.masks.values()
    assert "optimizer" not in mask  # the one other case differed in its engine: nothing asked for more
    steering.observe(_case(FSDP2(), optimizer=SGD()), None)  # a probe: FSDP2 without the bug
    assert steering.masks["bug"]["optimizer"] == "adam"  # what sets the hit apart from both misses


def test_masked_draws_are_counted_and_one_in_ten_runs_as_a_probe():
    steering = Steering(after=1)
    steering.observe(_case(DDP()), None)
    steering.observe(_case(FSDP2()), "bug")
    draws = [_case(FSDP2(), optimizer, steps) for optimizer in (SGD(), Adam(), SGD(lr=0.5)) for steps in range(1, 65)]
    let_through = [case for case in draws if steering.wanted(case)]
    assert all(_probe(case) for case in let_through)
    assert steering.probes["bug"] == len(let_through) and steering.masked["bug"] == len(draws) - len(let_through)
    assert len(draws) / PROBE_EVERY / 3 < len(let_through) < len(draws) / PROBE_EVERY * 3
    assert steering.wanted(_case(DDP()))


def test_a_draw_holding_a_rare_value_passes_a_mask_unless_the_bug_costs_a_restart():
    steering = Steering(after=1)
    steering.observe(_case(DDP()), None)
    steering.observe(_case(FSDP2()), "bug")
    draws = [_case(FSDP2(), optimizer, steps) for optimizer in (SGD(), Adam()) for steps in range(1, 33)]
    assert sum(steering.wanted(case) for case in draws) < len(draws) / 2  # masked, but for its probes
    assert all(steering.wanted(case, holds_rare=lambda: True) for case in draws)
    costly = Steering(after=1)
    costly.observe(_case(DDP()), None)
    costly.observe(_case(FSDP2()), "hang", costly=True)
    assert sum(costly.wanted(case, holds_rare=lambda: True) for case in draws) == sum(
        costly.wanted(case) for case in draws
    )


def test_masks_do_not_change_while_frozen_and_catch_up_after():
    steering = Steering(after=1, frozen=True)
    steering.observe(_case(FSDP2()), "bug")
    assert not steering.masks
    steering.update()
    assert steering.masks


def test_probes_that_keep_hitting_make_a_mask_probed_less_often():
    steering = Steering(after=1)
    steering.observe(_case(DDP()), None)
    steering.observe(_case(FSDP2()), "bug")
    draws = [_case(FSDP2(), optimizer, steps) for optimizer in (SGD(), Adam(), SGD(lr=0.5)) for steps in range(1, 65)]
    fresh = sum(map(steering.wanted, draws))
    for steps in range(1, 5):
        steering.observe(_case(FSDP2(), steps=steps), "bug")  # four probes, four hits
    assert steering.confirmed["bug"] == 4
    assert sum(map(steering.wanted, draws)) < fresh / 4
    steering.observe(_case(FSDP2(), optimizer=Adam()), None)  # a miss starts over
    assert steering.confirmed["bug"] == 0


def test_a_bug_that_costs_a_restart_is_masked_on_less_evidence():
    candidates = {"engine": "fsdp1"}
    others = [{"engine": "fsdp1"}] * 3  # a crash that comes one time in four
    assert separating_conditions(candidates, 1, others) is None
    assert separating_conditions(candidates, 1, others, min_precision=MIN_PRECISION_COSTLY) == candidates
    steering = Steering(after=3)
    for _ in range(3):
        steering.observe(_case(FSDP2()), None)
    steering.observe(_case(FSDP2()), "crash", costly=True)
    assert steering.masks["crash"]["load_engine"] == "fsdp2"


def test_a_known_crash_with_recorded_conditions_is_masked_before_its_first_hit():
    steering = Steering(after=1)
    steering.expect("crash", {"load_engine": "fsdp2"})
    assert not steering.wanted(_case(FSDP2(), steps=3)) or _probe(_case(FSDP2(), steps=3), 2)
    assert steering.wanted(_case(DDP()))
    steering.observe(_case(FSDP2(), optimizer=Adam()), "crash", costly=True)  # a probe that hit
    assert steering.masks["crash"] == {"load_engine": "fsdp2"}
