"""What a round-trip concluded, as plain data that crosses process boundaries as JSON.

Ranks send ``RankReport`` objects; the pool folds them into one ``Verdict``.
The signature groups verdicts that share a cause, so a campaign can tell a new
failure from one it has already shrunk or that the corpus marks as known.
"""

from __future__ import annotations

import re

import cattrs
from attrs import field, frozen
from attrs.validators import in_

#: What heads each stuck rank's record in a verdict's diagnostics (a rank that sent no report in time).
STUCK_RANK_STACKS = "last output and stacks"

__all__ = [
    "STUCK_RANK_STACKS",
    "Mismatch",
    "RankError",
    "RankReport",
    "Verdict",
    "STATUSES",
    "TRIAGE_CLASSES",
    "canonical_signature",
    "FORM",
    "masked_signature",
    "normalise_message",
]

#: pass: everything matched. mismatch: an oracle saw wrong state (silent corruption).
#: error: a rank raised. crash: a rank process died. hang: the case outran its deadline.
#: unsupported: torch rejected a combination it documents as unsupported (see ``unsupported.py``).
STATUSES = ("pass", "mismatch", "error", "crash", "hang", "unsupported")

#: The triage class a user reads in reports and corpus titles, worst first.
TRIAGE_CLASSES = {
    "mismatch": "silent corruption",
    "error": "loud error",
    "crash": "crash",
    "hang": "hang",
    "unsupported": "unsupported",
}


@frozen
class Mismatch:
    """One oracle's complaint about one state-dict entry."""

    oracle: str
    key: str
    rank: int
    detail: str
    index: tuple[int, ...] | None = None
    expected: str = ""
    actual: str = ""

    def describe(self) -> str:
        where = f" at index {list(self.index)}" if self.index is not None else ""
        values = f": expected {self.expected}, got {self.actual}" if self.expected or self.actual else ""
        return f"[{self.oracle}] {self.key} (rank {self.rank}){where}: {self.detail}{values}"


@frozen
class RankError:
    """An exception (any ``BaseException``) raised on one rank, with the phase it hit."""

    rank: int
    phase: str
    type: str
    message: str
    traceback: str = ""

    def describe(self) -> str:
        first = self.message.strip().splitlines()[-1] if self.message.strip() else ""
        return f"rank {self.rank} in {self.phase}: {self.type}: {first}"


@frozen
class RankReport:
    """What one rank sends back after one case."""

    rank: int
    mismatches: tuple[Mismatch, ...] = ()
    error: RankError | None = None
    timings: dict[str, float] = field(factory=dict)
    unchanged: tuple[str, ...] = ()  # rank 0: keys whose load-side value equalled the saved one before loading


@frozen
class Verdict:
    status: str = field(validator=in_(STATUSES))
    mismatches: tuple[Mismatch, ...] = ()
    errors: tuple[RankError, ...] = ()
    detail: str = ""
    seconds: float = 0.0
    where: str = ""  # crash/hang: the phase the first dead or stuck rank was in
    how: str = ""  # crash: the signal or exit code; hang: the deadline
    diagnostics: str = ""  # crash/hang: the ranks' last output and Python stacks
    unchanged: tuple[str, ...] = ()  # non-vacuity: keys the load could not be seen to change

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    @property
    def leaves_ranks_stuck(self) -> bool:
        """A hang, a crash, or an error some ranks never reported (``detail`` names them): the ranks must be
        started afresh (seconds), not only re-form their process group (a fraction of one)."""
        return self.status in ("hang", "crash") or (self.status == "error" and bool(self.detail))

    @property
    def is_failure(self) -> bool:
        """A finding: anything but a pass or a documented-unsupported combination."""
        return self.status not in ("pass", "unsupported")

    @property
    def triage(self) -> str:
        return TRIAGE_CLASSES.get(self.status, self.status)

    def cause(self) -> dict:
        """What fired, as plain data: the oracle or exception, its message, the ranks, the key."""
        if self.mismatches and self.status not in ("crash", "hang"):
            first = self.mismatches[0]
            return {
                "kind": "oracle",
                "name": first.oracle,
                "message": first.describe(),
                "ranks": sorted({m.rank for m in self.mismatches}),
                "key": first.key,
                "phase": "compare",
            }
        if self.errors and self.status not in ("crash", "hang"):
            error = min(self.errors, key=lambda e: e.rank)
            return {
                "kind": "exception",
                "name": error.type,
                "message": _last_line(error.message)[:500],
                "ranks": sorted(e.rank for e in self.errors),
                "key": "",
                "phase": error.phase,
            }
        # A crash or hang: peers' errors are only echoes of the dead or stuck rank.
        ranks = sorted({int(r) for r in re.findall(r"rank (\d+)", self.detail)})
        return {
            "kind": self.status,
            "name": self.how or self.status,
            "message": self.detail,
            "ranks": ranks,
            "key": "",
            "phase": self.where,
        }

    def signature(self) -> str:
        """A stable key for the cause: the same bug on other sizes, keys or names gives the same
        signature (see ``canonical_signature``)."""
        return canonical_signature(self._raw_signature())

    def _raw_signature(self) -> str:
        if self.status == "pass":
            return "pass"
        if self.status == "mismatch":
            first = self.mismatches[0]
            return f"mismatch:{first.oracle}:{_key_pattern(first.key)}:{_normalise(first.detail)}"
        if self.status in ("error", "unsupported") and self.errors:
            # The lowest rank's error is usually the root; peers often report its echo.
            error = min(self.errors, key=lambda e: e.rank)
            return f"{self.status}:{error.phase}:{error.type}:{normalise_message(error.message)}"
        if self.status in ("crash", "hang") and self.where:
            return f"{self.status}:{self.where}:{_normalise(self.how)}"
        return f"{self.status}:{_normalise(self.detail)}"

    def summary(self) -> str:
        if self.status == "pass":
            return "pass"
        if self.mismatches:
            more = f" (+{len(self.mismatches) - 1} more)" if len(self.mismatches) > 1 else ""
            return f"{self.status}: {self.mismatches[0].describe()}{more}"
        if self.errors:
            return f"{self.status}: " + "; ".join(e.describe() for e in self.errors[:4])
        return f"{self.status}: {self.detail}"


_NUMBER = re.compile(r"(?<![A-Za-z_])-?\d+(\.\d+)?")
_PATH = re.compile(r"(/[^\s:'\"]+)+")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_NAME_TUPLE = re.compile(r"\((?:'[^']*'(?:, )?)+,?\)")  # ('0.weight', '1.bias'): which parameters
# A parameter's or buffer's FQN, and FSDP's module_name=/prefix= fields: where in the tree, not what went wrong.
# Any hyperparameter or state name after it (``'<fqn>.weight.lr'`` in a KeyError) is part of the key too.
_FQN = re.compile(r"\b(?:\w+\.)+(?:weight|bias|running_mean|running_var|num_batches_tracked|experts\.w\d)(?:\.\w+)?\b")
_MODULE_FIELD = re.compile(r"\b(module_name|prefix)=[\w.]*")


def normalise_message(message: str) -> str:
    """The last line of an error message with paths, addresses, tuples of names, parameter FQNs
    and numbers blanked."""
    return _normalise(_last_line(message))


def _last_line(message: str) -> str:
    """The last non-blank line: where Python puts the exception type and message."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


#: The phases that train (before the save, and on after the save or the load): an optimizer step fails
#: in whichever of them takes the first step, so the phase says more about the case than about the bug.
_TRAINING_PHASES = ("train", "continue-saved", "continue-loaded", "train-resumed")
#: A DTensor op DTensor cannot place: which op (``lerp_`` for Adam, ``addcmul_`` for RMSprop, ``add_`` for SGD)
#: and the shapes of its arguments vary with the optimizer and the model, not with the bug.
_PROPAGATION = re.compile(r"(Sharding propagation failed for aten\.)\S*?\(.*")
#: A quoted list of parameter names (``Unexpected key(s) in state_dict: "0.weight", "1.weight"``): how
#: many there are is the model's.
_FQN_LIST = re.compile(r'"<fqn>"(?:, "<fqn>")+')
#: The same in a Python list's repr (``FSDPParamInfo has the param keys ['0.weight', '1.weight']``).
_QUOTED_FQN_LIST = re.compile(r"\['<fqn>'[^\]]*(?:\]|$)")
_COLLAPSED_LIST = "[<fqn>...]"
_SPACES = re.compile(r"\s{2,}")
#: FSDP1's "Differing optimizer state types for state <name>, values [...], and unflattened parameter names [...]":
#: which state it names is the first of a set (step's one-line values in one process, exp_avg's tensors in another,
#: whose repr leaves only the message's tail on its last line), so the message is one form whatever it names.
_DIFFERING_STATE = re.compile(r"^Differing optimizer state types for state |, and unflattened parameter names \[")
_DIFFERING_STATE_FORM = (
    "Differing optimizer state types for state <state>, values [...], and unflattened parameter names [<fqn>...]"
)
#: shardfuzz's own mesh dimension names carry the pool's generation (``shard0``, ``replicate3``).
_MESH_DIM = re.compile(r"\b(replicate|shard)\d+\b")


def _normalise(text: str) -> str:
    text = _MESH_DIM.sub(r"\1<g>", text)
    text = _PATH.sub("<path>", text)
    text = _ADDRESS.sub("<addr>", text)
    text = _NAME_TUPLE.sub("(<names>)", text)
    text = _FQN.sub("<fqn>", text)
    text = _MODULE_FIELD.sub(r"\1=<module>", text)
    text = _NUMBER.sub("<n>", text)
    return text[:200]


#: A top-level key of the state dict handed to a target in a message: ``optim.state``, ``optimizer.param_groups``,
#: ``Missing key in checkpoint state_dict: optim.``. A user's target names them as it likes.
_TOP_LEVEL = re.compile(r"\b[A-Za-z_]\w*\.(?=(?:state|param_groups)\b)")
_BLANKED_FQN = re.compile(r"<fqn>(?:\.\w+)+")  # as an older shardfuzz blanked it: <fqn>.weight.lr
_MISSING_KEY = re.compile(r"(state_dict: )[A-Za-z_]\w*\.")
_MESSAGE_CHARS = 160
#: Mismatch details that say a key is absent on one side: which optimizer-state entry it is
#: (``step``, ``exp_avg``, ``momentum_buffer``) depends on the optimizer, not on the bug.
_ABSENT = ("missing after load", "not in the saved state")
_BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked", "<buffer>")


#: A steering mask's key is its known signature, or for another form of one bug (met on the save side and on
#: the load side, say), the signature, this separator and the form's name.
FORM = "\x1f"


def masked_signature(key: str) -> str:
    """The known signature a steering mask's key masks."""
    return key.split(FORM, 1)[0]


def canonical_signature(signature: str) -> str:
    """One bug, one signature: blank what varies with the case but not with the bug.

    - a param-group hyperparameter's name (``lr`` and ``betas`` of one group not restored);
    - the optimizer-state name of a missing or extra entry (``step`` and ``momentum_buffer``);
    - how many parameter names a quoted list in an error message holds (the model's size, not the bug);
    - a module name heading a parameter name (``0.*.weight`` and ``block.*.weight``), and which model
      parameter or buffer it is (``model.*.weight`` and ``model.*.bias`` are ``model.*.<param>``);
    - the state name where a value holds another parameter's saved state (a mix-up of parameters);
    - in error messages, the top-level state-dict key a target chose (``optim.`` or ``optimizer.``), the
      generation in shardfuzz's mesh dimension names, and the op and arguments of a DTensor sharding
      propagation failure;
    - which training phase an error came from (``train``, ``continue-saved``, ``continue-loaded`` and a
      second round-trip's ``train-resumed`` are ``training``: a step fails in whichever phase takes it first).

    Idempotent, and a function of the signature string alone, so signatures stored by an
    older shardfuzz are brought to the same form when an entry is loaded.
    """
    status, _, rest = signature.partition(":")
    if status == "mismatch":
        parts = rest.split(":", 2)
        if len(parts) == 3:
            oracle, pattern, detail = parts
            return f"mismatch:{oracle}:{_canonical_pattern(pattern, detail)}:{detail}"
    elif status in ("error", "unsupported"):
        parts = rest.split(":", 2)
        if len(parts) == 3:
            phase, kind, message = parts
            message = _MISSING_KEY.sub(r"\1<top>.", _TOP_LEVEL.sub("<top>.", message))
            message = _MESH_DIM.sub(r"\1<g>", message)
            message = _PROPAGATION.sub(r"\1<op>(<specs>)", message)
            message = _FQN_LIST.sub('"<fqn>", ...', message)
            phase = "training" if phase in _TRAINING_PHASES else phase
            message = _BLANKED_FQN.sub("<fqn>", _FQN.sub("<fqn>", message))
            message = _QUOTED_FQN_LIST.sub(_COLLAPSED_LIST, message)
            message = _SPACES.sub(" ", message)  # a tensor's repr pads its columns by the width of its numbers
            if _DIFFERING_STATE.search(message):  # which state FSDP1 names first follows a set's order: per process
                message = _DIFFERING_STATE_FORM
            if _COLLAPSED_LIST in message:  # a stored message was cut inside a later list: end after the first
                message = message[: message.index(_COLLAPSED_LIST) + len(_COLLAPSED_LIST)]
            # Shorter than ``_normalise``'s 200 characters, so that a message an older shardfuzz cut at
            # 200 before blanking its names ends at the same place as one blanked first.
            return f"{status}:{phase}:{kind}:{message[:_MESSAGE_CHARS]}"
    return signature


def _canonical_pattern(pattern: str, detail: str) -> str:
    head, star, leaf = pattern.partition(".*.")
    if not star:
        return pattern
    if head.endswith("param_groups"):
        return f"{head}.*"
    if head.endswith("state") and (detail in _ABSENT or "another parameter's" in detail):
        return f"{head}.*"
    if head.endswith("state"):
        return pattern
    # A model entry (or a layout oracle's parameter name): which parameter is where, not what; whether it
    # is a parameter or a buffer (BatchNorm's running statistics) is what.
    return f"{'model' if head == 'model' else '*'}.*.{'<buffer>' if leaf in _BUFFER_NAMES else '<param>'}"


def _key_pattern(key: str) -> str:
    """Drop the module path: ``optim.state.0.1.weight.exp_avg`` -> ``optim.state.*.exp_avg``.

    The same bug on a deeper or shallower tree then keeps its signature.
    """
    parts = key.split(".")
    head = ".".join(parts[:2]) if parts[0] == "optim" and len(parts) > 2 else parts[0]
    return f"{head}.*.{parts[-1]}" if len(parts) > 1 else key


converter = cattrs.Converter(forbid_extra_keys=True)
