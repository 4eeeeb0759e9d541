"""What a corpus entry found on CPU ranks does on a GPU (``Entry.cuda``, written by ``replay --on-cuda --record``)."""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case._validators import strings

__all__ = ["CUDA_OUTCOMES", "DeviceCheck"]


#: ``DeviceCheck.outcome``: the entry replayed with its sides moved to a GPU failed as recorded; passed;
#: failed some other way; gave different answers on two runs; could not be run there (``detail`` says why).
CUDA_OUTCOMES = ("reproduces", "passes", "fails otherwise", "flaky", "not run")


@frozen
class DeviceCheck:
    """What an entry found on CPU ranks does with its sides moved to a GPU (``replay --on-cuda --record``).

    ``moved``: the sides on CUDA (a CPU side moves where the machine has a GPU for each of its ranks:
    NCCL runs one rank per GPU). ``on_cpu``: the same replay with every side on CPU, on the same
    machine and torch build, so that a bug that passes on CUDA is told apart from one fixed in that
    torch (``passes`` with ``on_cpu`` ``reproduces``: CPU only). ``detail``: the other failure's
    signature, or why it was not run."""

    outcome: str = field(validator=in_(CUDA_OUTCOMES))
    torch: str = field(validator=instance_of(str))  # the CUDA build it ran under, e.g. "2.11.0+cu130"
    gpu: str = field(default="", validator=instance_of(str))  # "NVIDIA H200 x1"
    moved: tuple[str, ...] = field(default=(), converter=strings)
    on_cpu: str = field(default="", validator=in_(("", *CUDA_OUTCOMES)))
    detail: str = field(default="", validator=instance_of(str))
    date: str = field(default="", validator=instance_of(str))

    @property
    def verdict(self) -> str:
        """One phrase for the known-bugs table: CUDA too, CPU only, or why it is not known."""
        where = f"{self.torch}, {self.gpu}" if self.gpu else self.torch
        if self.outcome == "reproduces":
            return f"CUDA too ({', '.join(self.moved)} on CUDA; {where})"
        if self.outcome == "passes" and self.on_cpu == "reproduces":
            return f"CPU only (passes with {', '.join(self.moved)} on CUDA, fails on CPU; {where})"
        if self.outcome == "not run":
            return f"not checked on CUDA: {self.detail}"
        cpu = f"; on CPU there: {self.on_cpu}" if self.on_cpu else ""
        return f"{self.outcome} on CUDA{cpu} ({where})"
