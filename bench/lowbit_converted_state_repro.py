"""torch and torchao alone, no shardfuzz, one process: does a torchao low-bit AdamW resume at its own precision from
a DCP checkpoint converted to torch.save's format? Corpus entry 6d2c57c1
(``torchao-low-bit-optimizer-keeps-plain-moments-it-loads``).

Each trial: ``Linear(4, 8192)`` takes one step with AdamW8bit or AdamW4bit (its moments quantised: 4,096 elements or
more), saves the optimizer's state dict with ``dcp.save``, converts the checkpoint with ``dcp_to_torch_save``, and a
fresh copy of the model and optimizer loads the converted file with ``torch.load`` and ``load_state_dict``. Both then
take the same three steps.

    python bench/lowbit_converted_state_repro.py

Prints the moments' type on each side, whether the converted values equal the saved ones, how far the weights drift
apart step by step, and the bytes one moment takes on each side.
"""

import os
import tempfile

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torchao.optim import AdamW4bit, AdamW8bit

WIDTH = 8192
STEPS = 3


def _step(model, optimizer, x) -> None:
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()


def _bytes(moment: torch.Tensor) -> int:
    """What a moment holds in memory: a subclass's inner tensors, or the plain tensor."""
    if type(moment) is not torch.Tensor and hasattr(moment, "__tensor_flatten__"):
        names, _ = moment.__tensor_flatten__()
        return sum(getattr(moment, n).numel() * getattr(moment, n).element_size() for n in names)
    return moment.numel() * moment.element_size()


def trial(optimizer_class) -> None:
    torch.manual_seed(0)
    saved_model = torch.nn.Linear(4, WIDTH)
    saved = optimizer_class(saved_model.parameters(), lr=0.01)
    _step(saved_model, saved, torch.randn(2, 4))
    with tempfile.TemporaryDirectory() as directory:
        dcp.save({"optim": saved.state_dict()}, checkpoint_id=directory)
        converted_path = os.path.join(directory, "converted.pt")
        dcp_to_torch_save(directory, converted_path)
        converted = torch.load(converted_path, weights_only=False)["optim"]
    converted["state"] = {int(k): v for k, v in converted["state"].items()}  # the conversion keys them by string
    before = saved.state_dict()["state"][0]["exp_avg"]
    after = converted["state"][0]["exp_avg"]
    print(f"{optimizer_class.__name__}: saved {type(before).__name__} -> converted {type(after).__name__}")
    print(f"  converted values equal the saved ones (dequantised): {torch.equal(before.dequantize(), after)}")

    loaded_model = torch.nn.Linear(4, WIDTH)
    loaded_model.load_state_dict(saved_model.state_dict())
    loaded = optimizer_class(loaded_model.parameters(), lr=0.01)
    loaded.load_state_dict(converted)
    print(f"  after load_state_dict the moments are {type(loaded.state[loaded_model.weight]['exp_avg']).__name__}")
    for step in range(1, STEPS + 1):
        x = torch.randn(2, 4)
        _step(saved_model, saved, x)
        _step(loaded_model, loaded, x)
        drift = (saved_model.weight - loaded_model.weight).abs()
        print(
            f"  step {step}: {int((drift > 0).sum())} of {drift.numel()} weight elements differ, by up to "
            f"{drift.max().item():.2e} (weights up to {saved_model.weight.abs().max().item():.2f})"
        )
    print(
        f"  one exp_avg: {_bytes(saved.state[saved_model.weight]['exp_avg'])} bytes on the saving side, "
        f"{_bytes(loaded.state[loaded_model.weight]['exp_avg'])} after the load"
    )


if __name__ == "__main__":
    for optimizer_class in (AdamW8bit, AdamW4bit):
        trial(optimizer_class)
