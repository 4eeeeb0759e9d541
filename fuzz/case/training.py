"""Training state beyond the model and optimizer: what a training loop keeps in the same checkpoint."""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import in_, instance_of

#: The LR schedulers a case's training state may hold (``rank_steps.make_scheduler`` builds them):
#: ``step`` StepLR (every 2 steps, gamma 0.5), ``cosine`` CosineAnnealingLR (T_max 8), ``linear``
#: LinearLR (from 0.25 over 4 steps), ``warmup-cosine`` SequentialLR of a 2-step LinearLR warm-up then
#: a cosine (nested schedulers' state: the usual LLM schedule).
SCHEDULERS = ("step", "cosine", "linear", "warmup-cosine")


@frozen
class TrainingState:
    """Application state saved in the same DCP checkpoint as the model and optimizer, as one
    ``Stateful`` (DCP calls its ``state_dict``/``load_state_dict`` itself), as torchtitan's trainer
    does: an LR ``scheduler`` stepped after every optimizer step, a gradient scaler where
    ``grad_scaler`` (``torch.amp.GradScaler("cpu")``, FSDP1's ``ShardedGradScaler``; growing its scale
    every 2 steps, so that the scale has changed by the save), the step counter, and a small user
    object (tokens seen, a tensor of data positions). After the load the scheduler's state, its
    next learning rate and the scaler's scale must be the saved side's."""

    scheduler: str = field(default="step", validator=in_(SCHEDULERS))
    grad_scaler: bool = field(default=False, validator=instance_of(bool))

    def dimensions(self) -> dict[str, str]:
        return {"training_state": self.scheduler, "grad_scaler": str(self.grad_scaler).lower()}


#: A case without training state, along the same dimensions.
NO_TRAINING_STATE = {"training_state": "none", "grad_scaler": "false"}
