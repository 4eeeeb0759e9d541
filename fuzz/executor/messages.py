"""The messages between an executor and its ranks: one frozen type per kind, and their form on the wire.

The warm pool talks to each rank over a ``multiprocessing`` pipe; torchrun's rank 0 posts to the other
ranks through torchrun's key-value store. Both carry a message as JSON bytes tagged with its kind
(``{"op": "case", ...}``): ``encode`` writes them, ``decode`` reads them and refuses anything else.

To the ranks: ``RunCase``, then ``Reset`` (pool) or ``Reform`` (torchrun) after a case that raised, and
``Stop``. From the ranks: ``Ready`` or ``Failed`` once they have tried to join a process group, and one
``CaseReport`` per case.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import attrs

__all__ = [
    "RunCase",
    "Reset",
    "Reform",
    "Stop",
    "Ready",
    "Failed",
    "CaseReport",
    "ToRank",
    "FromRank",
    "Message",
    "ProtocolError",
    "encode",
    "decode",
]


class ProtocolError(ValueError):
    """Not a message of this protocol: an unknown kind, fields that do not fit it, or bytes that are not JSON."""


# --- to the ranks ------------------------------------------------------------------------------------


@attrs.frozen
class RunCase:
    """The executor, to every rank, once per case: run your share of ``case`` and answer with a ``CaseReport``.

    ``case`` is the case as JSON data (``case.to_dict``): the rank reads it inside the case, so a case it
    cannot read is that case's error. The checkpoint goes under ``checkpoint_dir``. ``phase`` is "save" or
    "load" for half a case (a cross-version pool runs each half in its own Python), "both" otherwise.
    torchrun's rank 0 runs its own share of the very message it posts."""

    op: ClassVar[str] = "case"
    case: dict[str, Any]
    checkpoint_dir: str
    phase: str = "both"


@attrs.frozen
class Reset:
    """The pool, to every rank, after a case that raised, once every rank has answered: the collectives may
    be out of step, so destroy the process group and join a fresh one on the file store ``store``, in the
    same process (torch stays imported). The rank answers ``Ready``, or ``Failed`` and exits."""

    op: ClassVar[str] = "reset"
    store: str


@attrs.frozen
class Reform:
    """torchrun's rank 0, to the other ranks, after a case that raised: re-form the process group on the
    next prefix of torchrun's store (each rank counts the generations, rank 0 too). No answer."""

    op: ClassVar[str] = "reform"


@attrs.frozen
class Stop:
    """The executor, to every rank, when it closes: leave the loop, destroy the process group and exit.

    A pool's rank that is inside a case does not read its pipe: the pool terminates it instead."""

    op: ClassVar[str] = "stop"


ToRank = RunCase | Reset | Reform | Stop


# --- from the ranks ----------------------------------------------------------------------------------


@attrs.frozen
class Ready:
    """A pool's rank, once it has joined its process group (at start, after its warm-up case, and after
    each ``Reset``): it now waits for the next message."""

    op: ClassVar[str] = "ready"
    rank: int


@attrs.frozen
class Failed:
    """A pool's rank, instead of ``Ready``: it could not import the target or join a process group
    (``error`` is the traceback), and exits. At start the pool reports why it cannot start; after a
    ``Reset`` it closes and starts afresh for the next case."""

    op: ClassVar[str] = "failed"
    rank: int
    error: str


@attrs.frozen
class CaseReport:
    """A rank, after each ``RunCase``: its ``RankReport`` as JSON data (``verdict.converter``).

    The executor structures it (``fold.report_of``), so a report that does not is that rank's error,
    not the executor's."""

    op: ClassVar[str] = "report"
    report: dict[str, Any]

    @property
    def raised(self) -> bool:
        """Whether the rank's share raised (its peers may be left blocked in a collective)."""
        return bool(self.report.get("error"))


FromRank = Ready | Failed | CaseReport
Message = ToRank | FromRank

_KINDS: dict[str, type[Message]] = {kind.op: kind for kind in (RunCase, Reset, Reform, Stop, Ready, Failed, CaseReport)}


def encode(message: Message) -> bytes:
    """``message`` as JSON bytes tagged with its kind: ``{"op": "case", "case": ..., ...}``."""
    if type(message) not in _KINDS.values():
        raise ProtocolError(f"not a message of the rank protocol: {message!r}")
    return json.dumps({"op": message.op, **attrs.asdict(message, recurse=False)}).encode()


def decode(data: bytes | str) -> Message:
    """The message ``encode`` wrote; ``ProtocolError`` for anything else, saying what is wrong."""
    try:
        fields = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"not a message of the rank protocol (not JSON: {exc}): {data[:200]!r}") from None
    if not isinstance(fields, dict) or "op" not in fields:
        raise ProtocolError(f"not a message of the rank protocol (no 'op'): {data[:200]!r}")
    op = fields.pop("op")
    kind = _KINDS.get(op)
    if kind is None:
        raise ProtocolError(f"unknown message kind {op!r}: the rank protocol has {', '.join(sorted(_KINDS))}")
    try:
        return kind(**fields)
    except TypeError as exc:
        raise ProtocolError(f"a {op!r} message whose fields do not fit {kind.__name__}: {exc}") from None
