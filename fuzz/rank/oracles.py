"""Pure judges over saved versus loaded state, each with its own name in failure reports.

Each oracle takes plain data (state mappings of key -> tensor or value, or layout
records), never models or process groups, so each is testable with hand-made
inputs; ``roundtrip.py`` and ``sharded_checks.py`` extract that data on the ranks.

- ``complete-state``: full saved state == full loaded state, every bit, nothing
  missing or extra (parameters, persistent buffers, optimizer state with
  ``step``, param-group hyperparameters).
- ``non-vacuity``: which entries already equalled the saved state before the
  load (a loader that skips them would go unseen); counted, not a failure.
- ``continuation``: k more steps after the load give what k more steps on the
  saved model give.
- ``layout``: a DTensor-sharded load side keeps its mesh, placements, global
  shape and dtype.
- ``api-parity``: two torch APIs that must agree on the same state do.
- ``full-offload``: ``full_state_dict`` + ``cpu_offload`` puts everything on rank
  0, on CPU, and nothing on other ranks.
- ``loud-incompatible-load``: loading into a model of another shape raises.
- ``consolidated-files``: a Hugging Face checkpoint consolidated into whole-tensor
  files (``HfSafetensors(consolidated=True)``) holds, read with ``safetensors``
  itself, exactly the saved model state (names, dtypes, shapes, bits).
- ``resumed-state``: in a case that resumes twice (``Loop.resumes``), the second
  checkpoint, written by the load side after training on, loads into the save
  side's layout as ``complete-state`` judges the first (the same comparison).
- ``replica-consistency``: after the load, every rank's copy of a replicated value
  (DDP's parameters, buffers, step counters, HSDP's replicas of a shard) is the same,
  bit for bit. ``complete-state`` sees one copy only: rank 0's, or one replica's.

The round-trip gathers both sides to *full* tensors (``get_state_dict`` with
``full_state_dict=True`` and ``flatten_optimizer_state_dict=True``) and compares
them on rank 0: keys are engine-independent FQNs, so a checkpoint saved by
FSDP1 on 3 ranks compares directly against one loaded by FSDP2 on 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from attrs import frozen

from shardfuzz.rank.portable.bits import as_bits, as_lists, first_bit_difference, first_difference_beyond
from shardfuzz.verdict import Mismatch

__all__ = [
    "CONSOLIDATED_ORACLE",
    "ORACLES",
    "RESUMED_ORACLE",
    "STATE_ORACLE",
    "LayoutRecord",
    "api_parity",
    "compare_state",
    "expected_after_load",
    "continuation",
    "difference_kind",
    "first_bit_difference",
    "full_offload",
    "layout",
    "loud_incompatible_load",
    "replica_consistency",
    "unchanged_before_load",
]

STATE_ORACLE = "complete-state"
REPLICA_ORACLE = "replica-consistency"
RESUMED_ORACLE = "resumed-state"
CONSOLIDATED_ORACLE = "consolidated-files"
ORACLES = (
    STATE_ORACLE,
    REPLICA_ORACLE,
    "continuation",
    "layout",
    "api-parity",
    "full-offload",
    "loud-incompatible-load",
    RESUMED_ORACLE,
    CONSOLIDATED_ORACLE,
)


def compare_state(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    rank: int,
    oracle: str = STATE_ORACLE,
    close: tuple[float, float] | None = None,
    before: Mapping[str, Any] | None = None,
) -> list[Mismatch]:
    """Bitwise equality of every entry; nothing missing, nothing extra.

    Tensors must agree in dtype, shape and every bit (so ``-0.0 != 0.0`` and a
    NaN equals the same NaN). Other values (hyperparameters, ``step`` ints)
    compare with ``==``, a tuple equal to a list of the same values. ``close``
    as ``(rtol, atol)`` relaxes floating-point tensors to ``|a-b| <= atol + rtol*|b|``.
    For ``complete-state`` a bitwise difference is described by ``difference_kind``
    (``before``: the state before the load, so that a value never loaded says so).
    """
    found: list[Mismatch] = []
    for key in sorted(expected.keys() - actual.keys()):
        if not _representation_part(key, actual):
            found.append(Mismatch(oracle, key, rank, "missing after load"))
    for key in sorted(actual.keys() - expected.keys()):
        if not _representation_part(key, expected):
            found.append(Mismatch(oracle, key, rank, "not in the saved state"))
    for key in sorted(expected.keys() & actual.keys()):
        grid = _requantisation_error(key, expected, actual)
        mismatch = _compare_value(key, expected[key], actual[key], rank, oracle, (0.0, grid) if grid else close)
        if mismatch is not None and oracle in (STATE_ORACLE, RESUMED_ORACLE):
            mismatch = _with_kind(mismatch, expected[key], actual[key], before=before, saved=expected)
        if mismatch is not None:
            found.append(mismatch)
    return found


def _requantisation_error(key: str, expected: Mapping[str, Any], actual: Mapping[str, Any]) -> float:
    """Where one side holds ``key`` quantised (its ``:qmap`` and ``:scale`` parts) and the other in full precision,
    the most a value can move when it is put on the quantised side's grid: half the widest gap between adjacent
    entries of the quantisation map (or the gap between an end of its range and the entry nearest it), times the
    largest block scale (0.0 where both sides agree in form). A
    float32 moment loaded into a layout where torchao quantises it is rounded so, by design."""
    quantised = [side for side in (expected, actual) if f"{key}:qmap" in side and f"{key}:scale" in side]
    if len(quantised) != 1:
        return 0.0
    qmap, scale = quantised[0][f"{key}:qmap"].sort().values, quantised[0][f"{key}:scale"]
    if not qmap.numel() or not scale.numel():
        return 0.0
    # The map spans [-1, 1] (signed) or [0, 1]: a value between an end and the nearest entry rounds to that entry
    # (an unsigned map's smallest entry is above 0, so 0.0 itself comes back as that entry).
    low = -1.0 if float(qmap[0]) < 0 else 0.0
    widest = max(float(qmap.diff().max()) / 2 if qmap.numel() > 1 else 0.0, float(qmap[0]) - low, 1.0 - float(qmap[-1]))
    return widest * float(scale.abs().max().item())


def _representation_part(key: str, other: Mapping[str, Any]) -> bool:
    """An inner tensor of a quantised value (``portable.steps.plain_parts``' ``<key>:<name>``) whose value the other
    side holds unquantised: a difference of representation, not of state (the values under ``<key>`` compare)."""
    base, colon, _ = key.partition(":")
    return bool(colon) and base in other


def _with_kind(mismatch: Mismatch, want: Any, got: Any, **context) -> Mismatch:
    """A bitwise "values differ" told apart by ``difference_kind``, where it recognises the mechanism."""
    kind = difference_kind(mismatch.key, want, got, **context) if mismatch.detail == "values differ" else ""
    return attrs.evolve(mismatch, detail=f"values differ: {kind}") if kind else mismatch


def difference_kind(
    key: str,
    want: torch.Tensor,
    got: torch.Tensor,
    *,
    before: Mapping[str, Any] | None = None,
    saved: Mapping[str, Any] | None = None,
) -> str:
    """How a loaded tensor differs from the saved one, in words that tell checkpoint bugs apart ('' if no
    mechanism is recognised).

    They enter the failure's signature, so each names a mechanism that holds for
    any size of case (a finer word, such as "one element" or "part of it", would
    change as Hypothesis shrinks the case and stop the shrink): where it differs,
    the value is still what the model held before the load (not loaded); it holds
    another entry's saved values (another parameter's state of the same name, or
    another state of the same parameter: a mix-up); the saved values are all
    there, in other places (a shard or layout error); every difference is within
    bfloat16 rounding (a downcast).
    """
    differs = as_bits(want) != as_bits(got)
    old = (before or {}).get(key)
    if isinstance(old, torch.Tensor) and _same_layout(old, got):
        kept = as_bits(old) == as_bits(got)
        if bool((kept | ~differs).all()):
            return "holds its value from before the load"
    for other_key, other in (saved or {}).items():
        if other_key != key and _same_layout(other, got):
            same = as_bits(other) == as_bits(got)
            # Two elements at least: one equal value (a 0 step, a 1x1 weight) is as likely a coincidence.
            if bool((same | ~differs).all()) and int((same & differs).sum()) >= 2:
                whose = (
                    "another parameter's"
                    if other_key.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]
                    else "another entry's"
                )
                return f"holds {whose} saved values"
    if got.numel() > 1 and torch.equal(as_bits(got).flatten().sort().values, as_bits(want).flatten().sort().values):
        return "the saved values in other places"
    if want.is_floating_point():
        a, b = want.detach().cpu().double(), got.detach().cpu().double()
        if bool(((a - b).abs() <= 2.0**-7 * a.abs()).all()):
            return "within bfloat16 rounding"
    return ""


def _same_layout(a: Any, b: torch.Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)


def _compare_value(
    key: str, want: Any, got: Any, rank: int, oracle: str = STATE_ORACLE, close: tuple[float, float] | None = None
) -> Mismatch | None:
    if isinstance(want, torch.Tensor) or isinstance(got, torch.Tensor):
        if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
            return Mismatch(oracle, key, rank, "tensor versus non-tensor", expected=_short(want), actual=_short(got))
        if want.dtype != got.dtype:
            return Mismatch(oracle, key, rank, "dtype differs", expected=str(want.dtype), actual=str(got.dtype))
        if tuple(want.shape) != tuple(got.shape):
            return Mismatch(
                oracle, key, rank, "shape differs", expected=str(list(want.shape)), actual=str(list(got.shape))
            )
        if close is not None and want.is_floating_point():
            index = first_difference_beyond(want, got, *close)
            what = f"differs beyond rtol={close[0]:g}, atol={close[1]:g}"
        else:
            index, what = first_bit_difference(want, got), "values differ"
        if index is None:
            return None
        return Mismatch(
            oracle, key, rank, what, index=index, expected=repr(want[index].item()), actual=repr(got[index].item())
        )
    if as_lists(want) != as_lists(got):
        return Mismatch(oracle, key, rank, "value differs", expected=_short(want), actual=_short(got))
    return None


def expected_after_load(
    saved: Mapping[str, Any], before: Mapping[str, Any], kept: list[str], *, model_only: bool = False
) -> dict[str, Any]:
    """What the load side must hold after the load: the saved state, except the ``kept`` keys,
    which a load that leaves them out (``ignore_frozen_params``) must not touch: their values
    from before the load. ``model_only``: the load took the model alone (a lenient load, a consolidated one), so
    the rest (the optimizer's state, and any engine's own keys the save side reported) is the load side's own
    from before."""
    if model_only:
        saved = {k: v for k, v in saved.items() if k.startswith("model.")}
        saved.update({k: v for k, v in before.items() if not k.startswith("model.")})
    return {**saved, **{key: before[key] for key in kept if key in before}}


def unchanged_before_load(expected: Mapping[str, Any], before: Mapping[str, Any]) -> list[str]:
    """``non-vacuity``: keys whose load-side value already equalled the saved one before loading.

    For those keys the round-trip cannot tell a loader that skips them from one
    that works. Only tensors count: most param-group fields (``foreach``,
    ``maximize``) are the same defaults on both sides by design. The round-trip starts the load side from another seed and other
    optimizer hyperparameters so that this list stays short; it is counted in reports.
    """
    return [
        key
        for key in sorted(expected.keys() & before.keys())
        if isinstance(expected[key], torch.Tensor)
        and expected[key].numel()
        and _compare_value(key, expected[key], before[key], rank=0) is None
    ]


#: Continuation compares parameters after k more steps on both sides. Where the
#: two sides shard identically the arithmetic is the same, op for op, and the
#: result must match bit for bit. Where they differ, gradient averaging runs over
#: a different number of ranks: the sum of n equal per-rank gradients, divided by
#: n, is rounded differently for different n (about 1 ulp per reduction), and
#: FSDP1 reduces one flat buffer where FSDP2 reduces per parameter. Over two
#: steps of SGD or Adam with the small learning rates used here that stays below
#: 1e-5 relative (measured: at most ~2e-6), while every injected fault moves a
#: value by far more, so ``rtol=1e-4, atol=1e-6`` leaves ~50x headroom both ways.
#: In bfloat16 one rounding is already 2**-8 relative, and Adam divides it by a moment of the
#: same size: no tolerance tells that apart from a fault, so there only the bit-exact
#: comparison (identical layouts) runs.
CONTINUATION_TOLERANCE = (1e-4, 1e-6)
NO_TOLERANCE_DTYPES = ("bfloat16",)


#: An adaptive optimizer (Adam, AdamW, Adagrad, RMSprop) divides each gradient by a running measure of its
#: own size, so a gradient that is mathematically zero (a bias before a BatchNorm, a Linear(1->2) before a
#: LayerNorm, whose output is +-1 whatever the weight) is rounding noise turned into a step of up to lr:
#: reduced over another number of ranks, the noise differs and so does the step. Across layouts such
#: parameters may then differ by up to lr per step, and a tolerance below that reports the optimizer's
#: arithmetic, not the checkpoint (triaged from two empty-corpus findings). ``step`` counts stay exact.
ADAPTIVE_STEP_SLACK = 2.0

#: Continued under another torch than the one that saved, the same steps run other kernels (another
#: torch, or another build of it, picks other CPU kernels, optimizer implementations and reduction
#: orders), so even an identical layout no longer computes bit for bit. Where a gradient is
#: mathematically zero (a bias before a BatchNorm) it is rounding noise, and that noise differs between
#: torches: an SGD momentum buffer of it was 9.9e-5 under 2.10.0 and 1.09e-4 under 2.13.0, and an
#: adaptive optimizer turns it into a step of up to ``noise_step`` learning rates (RMSprop moved such a
#: BatchNorm bias by 0.078 at lr 0.01 under one torch and not at all under the other). Across torches,
#: continuation therefore compares the model's parameters within this tolerance (plus the adaptive slack,
#: scaled by the optimizer's ``noise_step``) and the optimizer's counters exactly; the optimizer's
#: floating-point moments after the extra steps are left out (they were compared bit for bit right
#: after the load, by complete-state). A fault that loses or resets state still moves the parameters by
#: a learning rate or more, and step counters exactly.
ACROSS_TORCHES_TOLERANCE = (1e-3, 1e-4)

#: Across layouts, the absolute slack of an optimizer moment after the extra steps: rounding noise of a
#: mathematically zero gradient (1.2e-6 seen), far below what a lost or wrong state moves it by.
MOMENT_NOISE_ATOL = 1e-5


def continuation(
    expected_after: Mapping[str, Any],
    actual_after: Mapping[str, Any],
    *,
    rank: int,
    identical_layout: bool,
    dtype: str = "float32",
    adaptive_lr: float | None = None,
    steps: int = 2,
    across_torches: bool = False,
    noise_step: float = 0.0,
) -> list[Mismatch]:
    """``continuation``: parameters after k more steps on the loaded model equal those on the saved one.

    ``adaptive_lr``: the largest learning rate of an adaptive optimizer; across layouts the parameters then
    get an absolute slack of ``ADAPTIVE_STEP_SLACK * lr * steps`` (see above). ``across_torches``: continued
    under another torch than the saving one: within ``ACROSS_TORCHES_TOLERANCE`` whatever the layout.
    Across layouts the optimizer's floating-point moments get an absolute slack of ``MOMENT_NOISE_ATOL``
    (a mathematically zero gradient is rounding noise, which another reduction changes: Adam's exp_avg
    of a bias before a BatchNorm was -1.2e-6 on one layout and 0.0 on another); across torches they are
    left out (above). Step counters stay exact. ``noise_step``: an adaptive optimizer's (``Optimizer.noise_step``);
    its ``momentum_buffer`` holds gradient-normalised steps (RMSprop's ``g / sqrt(v)``), which a noise gradient
    fills with up to ``noise_step`` a step whatever the noise's size, so across layouts those buffers get an
    absolute slack of ``ADAPTIVE_STEP_SLACK * noise_step * steps`` (RMSprop's momentum of a key-projection bias,
    whose true gradient is zero, was 0.0036 after two steps on one rank and 0.0124 on three)."""
    if (across_torches or not identical_layout) and dtype in NO_TOLERANCE_DTYPES:
        return []
    if identical_layout and not across_torches:
        return compare_state(expected_after, actual_after, rank=rank, oracle="continuation")
    if across_torches:
        moments = {
            k for k, v in expected_after.items() if k.startswith("optim.") and _is_float_tensor(v) and not _counter(k)
        }
        expected_after = {k: v for k, v in expected_after.items() if k not in moments}
        actual_after = {k: v for k, v in actual_after.items() if k not in moments}
    tolerance = ACROSS_TORCHES_TOLERANCE if across_torches else CONTINUATION_TOLERANCE
    found = compare_state(expected_after, actual_after, rank=rank, oracle="continuation", close=tolerance)
    if not across_torches:
        found = _within(found, expected_after, actual_after, rank, (tolerance[0], MOMENT_NOISE_ATOL), "optim.")
        if noise_step:
            normalised = (tolerance[0], ADAPTIVE_STEP_SLACK * noise_step * steps)
            found = [
                m
                for m in found
                if not m.key.endswith(".momentum_buffer")
                or _within([m], expected_after, actual_after, rank, normalised, "optim.")
            ]
    if adaptive_lr is None:
        return found
    return _within(found, expected_after, actual_after, rank, (tolerance[0], ADAPTIVE_STEP_SLACK * adaptive_lr * steps))


def _within(found, expected, actual, rank: int, slack: tuple[float, float], prefix: str = "model.") -> list[Mismatch]:
    """``found`` less the mismatches of ``prefix`` keys (not step counters) within ``slack`` (rtol, atol)."""
    return [
        m
        for m in found
        if not (
            m.key.startswith(prefix)
            and not _counter(m.key)
            and m.key in expected
            and m.key in actual
            and _compare_value(m.key, expected[m.key], actual[m.key], rank, "continuation", slack) is None
        )
    ]


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _counter(key: str) -> bool:
    """An optimizer's step counter (a float tensor in torch's Adam, Adagrad and RMSprop): an exact count."""
    return key.endswith(".step")


@frozen
class LayoutRecord:
    """How one parameter is laid out on one rank: plain data, made from a DTensor on the rank."""

    mesh_size: int
    placements: str
    shape: tuple[int, ...]
    dtype: str


def layout(records: Mapping[str, LayoutRecord], expected: Mapping[str, LayoutRecord], *, rank: int) -> list[Mismatch]:
    """``layout``: every parameter of a DTensor-sharded side is laid out as the side says."""
    found = []
    for key in sorted(expected.keys() | records.keys()):
        want, got = expected.get(key), records.get(key)
        if got is None or want is None:
            found.append(
                Mismatch(
                    "layout", key, rank, "not a DTensor after load" if got is None else "unexpected DTensor parameter"
                )
            )
        elif got != want:
            diff = [f for f in ("mesh_size", "placements", "shape", "dtype") if getattr(got, f) != getattr(want, f)]
            found.append(
                Mismatch(
                    "layout",
                    key,
                    rank,
                    f"{diff[0]} differs",
                    expected=str(getattr(want, diff[0])),
                    actual=str(getattr(got, diff[0])),
                )
            )
    return found


def api_parity(first: Mapping[str, Any], second: Mapping[str, Any], *, rank: int, what: str) -> list[Mismatch]:
    """``api-parity``: two APIs' views of the same state agree exactly; ``what`` names the pair."""
    return [
        attrs.evolve(m, detail=f"{what}: {m.detail}")
        for m in compare_state(first, second, rank=rank, oracle="api-parity")
    ]


def full_offload(
    held: Mapping[str, tuple[tuple[int, ...], str]], expected_shapes: Mapping[str, tuple[int, ...]], *, rank: int
) -> list[Mismatch]:
    """``full-offload``: rank 0 holds every key, full-shaped on CPU; other ranks hold nothing.

    ``held`` maps each key this rank got to ``(shape, device type)``.
    """
    if rank != 0:
        return [Mismatch("full-offload", key, rank, "a rank other than 0 holds state") for key in sorted(held)][:1]
    found = [
        Mismatch("full-offload", key, rank, "missing on rank 0") for key in sorted(expected_shapes.keys() - held.keys())
    ]
    for key in sorted(expected_shapes.keys() & held.keys()):
        shape, device = held[key]
        if device != "cpu":
            found.append(Mismatch("full-offload", key, rank, "not offloaded to CPU", expected="cpu", actual=device))
        elif tuple(shape) != tuple(expected_shapes[key]):
            found.append(
                Mismatch(
                    "full-offload",
                    key,
                    rank,
                    "not full-shaped",
                    expected=str(list(expected_shapes[key])),
                    actual=str(list(shape)),
                )
            )
    return found


def loud_incompatible_load(mutation: str, raised: str | None, *, rank: int) -> list[Mismatch]:
    """``loud-incompatible-load``: loading into an incompatible model must raise (``raised``: the error)."""
    if raised is not None:
        return []
    return [
        Mismatch(
            "loud-incompatible-load", "model", rank, f"loading into a model with a {mutation} mutation raised nothing"
        )
    ]


def replica_consistency(pieces_by_rank: Mapping[int, Mapping[tuple[str, str], Any]]) -> list[Mismatch]:
    """``replica-consistency``: every copy of a replicated value agrees with the lowest rank's copy.

    ``pieces_by_rank`` maps a rank to what it holds after the load, keyed by
    ``(key, region)``: the region names which part of the value it is (``"whole"``, or
    a shard's offsets or mesh coordinates), so two ranks holding the same region of the
    same key hold replicas of it. One mismatch per key at most: the first rank whose
    copy differs.
    """
    holders: dict[tuple[str, str], list[tuple[int, Any]]] = {}
    for rank in sorted(pieces_by_rank):
        for where, value in pieces_by_rank[rank].items():
            holders.setdefault(where, []).append((rank, value))
    found, reported = [], set()
    for (key, _region), copies in sorted(holders.items()):
        (first_rank, first), *others = copies
        for rank, value in others:
            if key in reported:
                break
            mismatch = _compare_value(key, first, value, rank, REPLICA_ORACLE)
            if mismatch is not None:
                mismatch = _with_kind(mismatch, first, value)
                # The region stays out of the detail: the same bug on a DDP and on an HSDP side is one signature.
                found.append(
                    attrs.evolve(mismatch, detail=f"replica differs from rank {first_rank}'s copy: {mismatch.detail}")
                )
                reported.add(key)
    return found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
