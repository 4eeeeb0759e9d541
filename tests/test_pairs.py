"""Pairwise coverage: the pairs a campaign reaches, and the steering that passes over draws bringing no new pair."""

import attrs
import pytest

from shardfuzz.case import FSDP2, SGD, Case, Linear, Model, Sequential, Side, dimensions
from shardfuzz.search.campaign import CampaignSettings, FunctionHost, run_campaign
from shardfuzz.search.pairs import RARE, PairSteering, pairs_of
from shardfuzz.verdict import Verdict

CASE = Case(
    model=Model(2, Sequential([Linear(3)])), save=Side(FSDP2(), (2,)), load=Side(FSDP2(), (2,)), optimizer=SGD()
)


def test_the_pairs_of_a_case_are_every_two_of_its_dimension_values_in_name_order():
    assert pairs_of({"b": "1", "a": "x", "c": "y"}) == {("a=x", "b=1"), ("a=x", "c=y"), ("b=1", "c=y")}
    n = len(dimensions(CASE))
    assert len(pairs_of(dimensions(CASE))) == n * (n - 1) // 2


def test_a_draw_that_brings_no_new_pair_or_rare_value_is_passed_over_but_one_in_keep_every_and_never_while_frozen():
    steering = PairSteering(keep_every=4)
    assert steering.wanted(CASE) and steering.holds_rare(CASE)  # everything is new
    for _ in range(RARE):  # and rare: a value run fewer than RARE times is always wanted
        steering.observe(CASE)
    same = [attrs.evolve(CASE, seed=seed) for seed in range(200)]  # the seed is no dimension: nothing new
    assert not steering.holds_rare(CASE)
    let_through = sum(steering.wanted(case) for case in same)
    assert 20 <= let_through <= 80 and steering.passed_over == 200 - let_through
    assert [steering.wanted(case) for case in same] == [steering.wanted(case) for case in same]  # stable
    other = attrs.evolve(CASE, steps=3)
    assert steering.wanted(other)  # a new pair (steps=3 with everything else)
    steering.frozen = True
    assert all(steering.wanted(case) for case in same)  # a shrink's candidates are never passed over
    assert steering.summary() == {"reached": len(pairs_of(dimensions(CASE))), "passed_over": steering.passed_over}


def test_a_campaign_counts_the_pairs_it_reaches_and_steering_reaches_more_in_as_many_cases():
    host = FunctionHost(lambda case: Verdict("pass", seconds=0.001))
    # Seed 2: steered ahead by 1,128 pairs (seeds 1-8 by 230 to 1,400; seed 3's lead was the narrowest and turned
    # with the tests run before it, which change the draws' random state)
    plain = run_campaign(host, CampaignSettings(budget=120, seed=2, max_world_size=4, max_cases=150))
    steered = run_campaign(host, CampaignSettings(budget=120, seed=2, max_world_size=4, max_cases=150, pairwise=True))
    assert plain.cases_run == steered.cases_run == 150
    assert plain.pairwise["passed_over"] == 0 < steered.pairwise["passed_over"]
    assert steered.pairwise["reached"] > plain.pairwise["reached"]
    assert len(steered.reached_pairs) == steered.pairwise["reached"]


@pytest.mark.slow  # 16 s: Hypothesis gives a round up after 459 draws
def test_a_round_whose_every_draw_the_filters_pass_over_ends_and_the_next_draws_unfiltered(monkeypatch):
    # A small space under the masks and the pair bar (the deepspeed target's, measured: 459 of 459 draws passed
    # over) once ended the whole run in Hypothesis's Unsatisfiable.
    monkeypatch.setattr(PairSteering, "wanted", lambda self, case: False)
    host = FunctionHost(lambda case: Verdict("pass", seconds=0.001))
    result = run_campaign(host, CampaignSettings(budget=60, seed=1, max_world_size=2, max_cases=3, pairwise=True))
    assert result.rounds_filtered_out >= 1
    assert result.cases_run == 3
