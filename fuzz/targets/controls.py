"""Controls: targets that are right up to rounding, which the oracles must pass (the mutants' opposite).

A mutant shows that an oracle can fail; a control shows that it does not fail where it must not. The
float64 referee (``executor.referee``) passes a continuation mismatch that is float32 rounding; whether a
given case's float32 run differs at all depends on the machine (presumably its CPU kernels' order of summation: the two
false positives that 600 s runs found failed on one machine and pass outright on another), so the referee's
test needs a difference that is rounding-sized on every machine. ``RoundingNoiseAfterLoad`` makes one.
"""

from __future__ import annotations

import torch

from shardfuzz.targets._state_access import LoadSideKept

__all__ = ["RoundingNoiseAfterLoad", "NOISE_ULPS"]

#: How far the loaded model's output is moved, in units of its dtype's epsilon: 4.9e-4 relative in float32,
#: past continuation's rtol of 1e-4 in the moments its gradients feed, and 9.1e-13 in float64, far inside it.
NOISE_ULPS = 4096


class RoundingNoiseAfterLoad(LoadSideKept):
    """Loads right, then moves the loaded model's every output by ``NOISE_ULPS`` epsilons of its dtype, as a
    kernel that sums in another order moves it by a few: the state the load restored is exact, training on
    from it differs by rounding only. A continuation mismatch in float32, a pass in float64."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        if self.loaded_into is not None:
            self.loaded_into.register_forward_hook(_with_noise)


def _with_noise(_module, _inputs, output):
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output * (1 + NOISE_ULPS * torch.finfo(output.dtype).eps)
    return output
