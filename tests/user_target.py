"""A user's checkpoint code with one deliberate bug: the example from the README."""

import torch.distributed.checkpoint as dcp


class ForgetsTheStep:
    """DCP, but the optimizer's step counters are not restored."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        dcp.save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)

    def load(self, state_dict, *, checkpoint_id, process_group):
        dcp.load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        for key, value in state_dict["optim"].items():  # flattened: "state.<fqn>.step"
            if key.endswith(".step"):
                value.zero_()
