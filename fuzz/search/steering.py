"""Steering: a campaign stops drawing cases like a known bug's hits, so its time goes to the unknown.

What "like" means is learned from the run itself. Every dimension value that all of a
known bug's hits share (and its own corpus case, where the caller knows it) is a
candidate condition; of those, the fewest that set its hits apart from every other
case seen so far (a greedy set cover) are its mask, and draws meeting a mask are
filtered out. A mask learned from few cases can be too wide, and the cases it hides
would never be seen to show it: one in ``PROBE_EVERY`` masked draws is let through
anyway, and a probe that does not hit the bug narrows the mask at once. Each probe
that does hit it halves how often its mask is probed (down to one in
``PROBE_EVERY * 2**MAX_PROBE_HALVINGS``): a mask that keeps being right costs less and less.
"""

from __future__ import annotations

import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping

import attrs

from shardfuzz.case import Case, dimensions
from shardfuzz.case.conditions import meets
from shardfuzz.verdict import FORM, masked_signature

__all__ = ["PROBE_EVERY", "Expectation", "Steering", "separating_conditions"]

#: One in this many draws that a mask would hide is run anyway (a probe of the mask).
PROBE_EVERY = 10
#: A mask whose probes hit its bug this many times in a row is probed at its rarest.
MAX_PROBE_HALVINGS = 4
#: Cases remembered to learn masks from (older ones are forgotten: a bounded cost per hit).
HISTORY = 2000
#: A mask is kept only while at least this share of the seen cases meeting it hit its bug; for a bug whose
#: hits cost a pool restart (seconds, against a fraction of one for a passing case), a smaller share.
MIN_PRECISION = 0.5
MIN_PRECISION_COSTLY = 0.2
#: The mask of a bug whose hits cost a restart stops narrowing once this share of the cases it meets hit it.
GOOD_ENOUGH_COSTLY = 0.5


def separating_conditions(
    candidates: Mapping[str, str],
    hits: int,
    others: Iterable[Mapping[str, str]],
    *,
    min_precision: float = MIN_PRECISION,
    good_enough: float = 1.0,
) -> dict[str, str] | None:
    """The fewest of ``candidates`` (conditions every one of ``hits`` cases met) that the ``others`` (cases
    that did not hit) do not all meet, chosen greedily: each step takes the condition that rules out most
    of the others still left. None when the others left over would make the mask wrong more often than
    right (share of hits < ``min_precision``). With no other case to tell apart, all the candidates.
    A pick that the later ones made redundant is dropped again: each condition kept rules out someone.
    Picking stops once the share of hits among the cases left reaches ``good_enough``: below 1 for a bug
    whose every hit costs a restart, where a condition picked only to rule out a few look-alikes (a crash
    that does not come every time) would let its next hits through."""
    others_seen = left = list(others)
    chosen: dict[str, str] = {}
    open_conditions = dict(candidates)
    while left and open_conditions and hits / (hits + len(left)) < good_enough:
        # meets, not equality: a condition may admit several values ('2|3|4'), which no case's value equals
        name, value = max(
            open_conditions.items(), key=lambda item: sum(1 for other in left if not meets(other, dict([item])))
        )
        still = [other for other in left if meets(other, {name: value})]
        if len(still) == len(left):
            break  # no candidate rules out any more of them
        chosen[name] = open_conditions.pop(name)
        left = still
    for name in list(chosen):  # an early pick that later ones made redundant goes (a narrower mask than needed)
        value = chosen.pop(name)
        if sum(1 for other in others_seen if meets(other, chosen)) > len(left):
            chosen[name] = value
    if not chosen:
        chosen = dict(candidates)
    if hits / (hits + len(left)) < min_precision:
        return None
    return chosen


def _probe(case: Case, confirmed: int = 0) -> bool:
    """Whether a masked draw is run anyway, for a mask whose last ``confirmed`` probes hit its bug: a stable
    function of the case, so that Hypothesis sees the same answer each time it draws it, and a seed repeats
    a run's draws."""
    return zlib.crc32(repr(case).encode()) % (PROBE_EVERY << min(confirmed, MAX_PROBE_HALVINGS)) == 0


@attrs.frozen
class Expectation:
    """A known bug to mask from the first draw: the ``conditions`` its corpus entries record (``known.when``);
    ``measured`` when an explanation measured them (then ``case``, its corpus case's dimensions, offers the
    values that narrow the mask if a probe misses); ``costly`` when each of its hits costs a restart;
    ``probed`` False for a costly finding that is not a bug (a limitation, a use nothing promises): it is
    steered around, and a probe that re-finds it would buy nothing for the restart it costs."""

    conditions: Mapping[str, str]
    measured: bool = False
    case: Mapping[str, str] = attrs.Factory(dict)
    costly: bool = True
    probed: bool = True


@attrs.define
class Steering:
    """The masks of one campaign's known bugs, learned from the cases it runs.

    ``after``: hits of a known bug before it is masked (one whose hits leave ranks stuck, a hang, a crash
    or an error some ranks never reported, is masked at its first: each costs a restart). ``own_case``: the
    dimensions of a known bug's own corpus case, or None; only values its hits share with it are candidates.
    ``masks`` are the conditions in force, by key (a known signature, or with ``verdict.FORM`` one form of its
    bug); ``masked`` counts the draws each filtered out, ``probes`` those it let through to check itself.
    """

    after: int
    own_case: Callable[[str, Case], Mapping[str, str] | None] = lambda signature, case: None
    masks: dict[str, dict[str, str]] = attrs.Factory(dict)
    masked: Counter = attrs.Factory(Counter)
    probes: Counter = attrs.Factory(Counter)
    confirmed: Counter = attrs.Factory(Counter)  # mask key -> its probes in a row that hit its bug
    frozen: bool = False  # while a round shrinks a new failure: its strategy must not change under it
    _candidates: dict[str, dict[str, str]] = attrs.Factory(dict)  # known signature -> what all its hits shared
    _hits: Counter = attrs.Factory(Counter)
    _costly: set = attrs.Factory(set)
    _history: deque = attrs.Factory(lambda: deque(maxlen=HISTORY))  # (dimensions, known signature or None)
    _stale: set = attrs.Factory(set)
    _required: dict[str, dict[str, str]] = attrs.Factory(dict)  # mask key -> the measured conditions it keeps
    _unprobed: set = attrs.Factory(set)  # mask keys never probed (``Expectation.probed``)

    def expect(self, signature: str, expectation: Expectation | Mapping[str, str]) -> None:
        """Mask a known bug from the first draw (``Expectation``); its corpus case counts as its first hit.

        ``signature`` is the mask's key: the known signature, or ``FORM`` and a number after it for another form
        of the same bug. Triaged by a person (not ``measured``): probes and hits refine the mask like any
        other. Measured by an explanation: the conditions are the bug's own, so every mask of it keeps them; a
        probe that misses narrows it with values of its corpus case that its hits share. A ``costly`` bug's
        mask is probed at the rarest rate from the start."""
        if not isinstance(expectation, Expectation):
            expectation = Expectation(dict(expectation))
        conditions = dict(expectation.conditions)
        self.masks[signature] = conditions
        if not expectation.probed:
            self._unprobed.add(signature)
        self._hits[signature] += 1
        if expectation.costly:  # each probe that hits costs a restart: probed at the rarest rate from the start
            self._costly.add(signature)
            self.confirmed[signature] = MAX_PROBE_HALVINGS
        if expectation.measured:
            self._required[signature] = dict(conditions)
            self._candidates[signature] = dict(expectation.case)
            return
        self._candidates[signature] = dict(conditions)

    def wanted(self, case: Case, *, holds_rare: Callable[[], bool] | None = None) -> bool:
        """The draw filter: False for a case that meets a mask (and is not one of its probes). ``holds_rare()``: whether
        the draw holds a value the run has hardly run (``PairSteering.holds_rare``), asked only of a draw a mask meets;
        such a draw is run as a probe of any mask but a costly bug's, so that masks over common bugs do not starve a
        value (a hit costs one case, not a shrink)."""
        if not self.masks:
            return True
        dims = dimensions(case)
        for signature, conditions in self.masks.items():
            if meets(dims, conditions):
                # A costly bug's mask starts two halvings in: each probe that hits it costs a restart.
                probe = (holds_rare is not None and signature not in self._costly and holds_rare()) or (
                    signature not in self._unprobed
                    and _probe(case, self.confirmed[signature] + 2 * (signature in self._costly))
                )
                if probe:
                    self.probes[signature] += 1
                    return True
                self.masked[signature] += 1
                return False
        return True

    def covers(self, case: Case, signature: str) -> bool:
        """Whether a mask of the known bug ``signature`` meets ``case`` (a hit it covers is one of its probes)."""
        dims = dimensions(case)
        return any(masked_signature(key) == signature and meets(dims, c) for key, c in self.masks.items())

    def observe(self, case: Case, known_signature: str | None, *, costly: bool = False) -> None:
        """Learn from a case that ran: ``known_signature`` is the known bug it hit, if any; ``costly``
        when that hit left ranks to restart (``Verdict.leaves_ranks_stuck``)."""
        dims = dimensions(case)
        for key, conditions in self.masks.items():
            if meets(dims, conditions):  # a probe (or drawn before the mask formed)
                if masked_signature(key) == known_signature:
                    self.confirmed[key] += 1
                else:  # it missed: narrow the mask
                    self.confirmed[key] = 0
                    self._stale.add(key)
        if known_signature is not None:
            forms = [key for key, required in self._required.items() if masked_signature(key) == known_signature]
            # A hit outside every measured form of its bug teaches a mask of its own, as an unexplained bug's do.
            outside = known_signature + FORM + "learned" if known_signature in self._required else known_signature
            hit = [key for key in forms if meets(dims, self._required[key])] or [outside]
            for key in hit:
                self._hits[key] += 1
                if costly:
                    self._costly.add(key)
                shared = self._candidates.get(key)
                if shared is None:
                    own = self.own_case(known_signature, case)
                    shared = dict(dims) if own is None else {k: v for k, v in dims.items() if own.get(k) == v}
                self._candidates[key] = {k: v for k, v in shared.items() if meets(dims, {k: v})}
                self._stale.add(key)
        self._history.append((dims, known_signature))
        if not self.frozen:
            self.update()

    def update(self) -> None:
        """Recompute the masks that cases seen since the last update bear on."""
        for signature in sorted(self._stale):
            required = self._required.get(signature, {})
            if not required and signature not in self._costly and self._hits[signature] < self.after:
                continue
            others = [
                dims for dims, hit in self._history if hit != masked_signature(signature) and meets(dims, required)
            ]
            if required and not others:
                self.masks[signature] = dict(required)
                continue
            costly = signature in self._costly
            candidates = {k: v for k, v in self._candidates.get(signature, {}).items() if k not in required}
            mask = separating_conditions(
                candidates,
                self._hits[signature],
                others,
                min_precision=MIN_PRECISION_COSTLY if costly else MIN_PRECISION,
                good_enough=GOOD_ENOUGH_COSTLY if costly else 1.0,
            )
            if mask is not None and (mask or required):
                self.masks[signature] = {**required, **mask}
            else:
                self.masks.pop(signature, None)
        self._stale.clear()
