"""Whether FSDP2 trains on CPU ranks in the installed torch: only running it tells (``capabilities`` asks)."""

from __future__ import annotations

__all__ = ["fsdp2_on_cpu_fails"]

_FSDP2_PROBE = """
import os, tempfile, torch, torch.distributed as dist
from torch import nn
try:
    from torch.distributed.fsdp import fully_shard
except ImportError:
    from torch.distributed._composable.fsdp import fully_shard
store = os.path.join(tempfile.mkdtemp(prefix="shardfuzz-probe-"), "store")
dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)
from torch.distributed.device_mesh import DeviceMesh
model = nn.Sequential(nn.Linear(2, 2))
fully_shard(model, mesh=DeviceMesh.from_group(dist.group.WORLD, "cpu"))
optim = torch.optim.SGD(model.parameters(), lr=0.1)
model(torch.randn(2, 2)).sum().backward()
optim.step()
dist.destroy_process_group()
"""


def fsdp2_on_cpu_fails() -> str:
    """'' if one FSDP2 training step runs on a one-rank gloo group, else the error's last line.

    Older torch has ``fully_shard`` but fails on CPU ranks (CUDA streams and
    events inside it); only running it tells. It runs in a subprocess (a process
    group in the caller would be in the way), once per torch build: the answer is
    cached under ``$XDG_CACHE_HOME/shardfuzz`` (or ``~/.cache/shardfuzz``).
    """
    import json
    import os
    import subprocess
    import sys

    import torch

    cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shardfuzz")
    key = f"fsdp2-cpu-{torch.__version__}-{os.path.getmtime(torch.__file__):.0f}.json"
    path = os.path.join(cache_dir, key)
    try:
        with open(path) as f:
            return json.load(f)["error"]
    except (OSError, ValueError, KeyError):
        pass
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _FSDP2_PROBE], capture_output=True, text=True, timeout=120, env=env
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        error = "" if proc.returncode == 0 else (lines[-1] if lines else f"exit code {proc.returncode}")
    except subprocess.TimeoutExpired:
        error = "the probe did not finish within 120 s"
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"error": error}, f)
    except OSError:
        pass  # no cache: probe again next time
    return error
