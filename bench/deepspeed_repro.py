"""DeepSpeed alone, without shardfuzz: the standalone measurements behind the deepspeed target's corpus entries.

Two gloo ranks on CPU build a model (a Linear, optionally with a 0-d parameter or a BatchNorm before it) and a torch
optimizer, hand them to deepspeed.initialize, train, and with save=1 save, convert with ds_to_universal and load the
universal checkpoint into a fresh engine (another stage or precision with lstage/lbf16), comparing DeepSpeed's full
fp32 weights and optimizer state by name. Options as key=value:

    python bench/deepspeed_repro.py opt=adagrad groups=2 stage=1 width=64          # two param groups (456de623)
    python bench/deepspeed_repro.py opt=adagrad grouplr=0.5 stage=3 width=64       # a group's own lr (456de623)
    python bench/deepspeed_repro.py scalar=true stage=1 width=64                   # a 0-d parameter (fe6f2894)
    python bench/deepspeed_repro.py opt=adam amsgrad=true save=1 stage=1 width=64  # universal state names (dbfbfe28)
    python bench/deepspeed_repro.py batchnorm=true stage=2 bf16=true width=64      # bf16 BatchNorm (eedfba77)
    python bench/deepspeed_repro.py opt=adam save=1 stage=1 width=2 out=1 nobias=true  # 2 elements (9a829f01)
    python bench/deepspeed_repro.py opt=adamw frozen=true save=1 stage=3 width=64     # a frozen Linear, ZeRO 3
    python bench/deepspeed_repro.py opt=adam save=1 stage=1 elastic=true route=same   # an elastic save, plain load
    python bench/deepspeed_repro.py frozen=true save=1 stage=1 consolidate=true        # zero_to_fp32, ZeRO 1 frozen
    python bench/deepspeed_repro.py frozen=true frozengroup=true stage=1               # a group of frozen params only
    (route=same: load_checkpoint of the saved tag itself; lelastic=true: the loading engine elastic too)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


class Scalar(torch.nn.Module):
    """A Linear scaled by a learnable 0-d parameter (as CLIP's logit_scale is)."""

    def __init__(self, n):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)
        self.scale = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.lin(x) * self.scale


def build(o):
    torch.manual_seed(0)
    n, m = o["width"], o.get("out", o["width"])
    if o.get("scalar"):
        model = Scalar(n)
    elif o.get("frozen"):  # a second Linear that does not train
        model = torch.nn.Sequential(torch.nn.Linear(n, m), torch.nn.Linear(m, m))
        model[1].requires_grad_(False)
    elif o.get("batchnorm"):
        model = torch.nn.Sequential(torch.nn.BatchNorm1d(n), torch.nn.Linear(n, m))
    else:
        model = torch.nn.Sequential(torch.nn.Linear(n, m, bias=not o.get("nobias")))
    kw = {"lr": 0.01, **({"amsgrad": True} if o.get("amsgrad") else {})}
    lrs = o.get("lrs", [None, None])  # with groups=2: each group's own lr
    params = [p for p in model.parameters() if p.requires_grad]
    if o.get("frozengroup"):  # the trainable parameters in one group, the frozen Linear's alone in a second
        frozen = [p for p in model.parameters() if not p.requires_grad]
        return model, OPTIMIZERS[o["opt"]]([{"params": params}, {"params": frozen}], **kw)
    if o.get("groups", 1) == 2:
        groups = [{"params": part, **({"lr": lr} if lr else {})} for part, lr in zip((params[:1], params[1:]), lrs)]
    elif o.get("grouplr"):
        groups = [{"params": params, "lr": o["grouplr"], "lr_decay": 0.25}]
    else:
        groups = params
    return model, OPTIMIZERS[o["opt"]](groups, **kw)


def config(stage, bf16, universal=False, elastic=False):
    c = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage, **({"elastic_checkpoint": True} if elastic else {})},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": bf16},
    }
    if universal:
        c["checkpoint"] = {"load_universal": True}
    return c


def full_state(engine, keys):
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    state = {}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:  # no fp32 master: the parameter itself, gathered under ZeRO 3
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                state[name] = p.detach().clone()
            continue
        state[name] = safe_get_full_fp32_param(p)
        for k in keys:
            state[f"{name}.{k}"] = safe_get_full_optimizer_state(p, k)
    return state


def worker(rank, world, o, d, q):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(o.get("port", 29631)),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        DS_ACCELERATOR="cpu",
    )
    res: dict = {}
    try:
        import deepspeed
        from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
        stage, bf16 = o["stage"], o.get("bf16", False)
        model, opt = build(o)
        saving = config(stage, bf16, elastic=o.get("elastic", False))
        engine, zero, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=saving)
        groups = [{k: v for k, v in g.items() if k in ("lr", "lr_decay")} for g in zero.optimizer.param_groups]
        res["groups after initialize"] = groups
        for step in range(o.get("steps", 1)):
            torch.manual_seed(100 + step + rank)
            x = torch.randn(2, o["width"], dtype=torch.bfloat16 if bf16 else torch.float32)
            engine.backward(engine(x).float().pow(2).sum())
            engine.step()
        res["trained"] = True
        if o.get("save"):
            engine.save_checkpoint(d, tag="t", client_state={UNIVERSAL_CHECKPOINT_INFO: {}})
            keys = sorted({k for s in zero.optimizer.state.values() for k in s} - {"step"})
            expected = full_state(engine, keys)
            dist.barrier()
            if o.get("consolidate"):  # zero_to_fp32: the fp32 weights gathered into one state dict, on rank 0
                if rank == 0:
                    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                    consolidated = get_fp32_state_dict_from_zero_checkpoint(d, tag="t")
                    res["missing from zero_to_fp32"] = sorted(set(build(o)[0].state_dict()) - set(consolidated))
                q.put((rank, "ok", res))
                return
            if rank == 0:
                command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal"]
                command += ["--input_folder", os.path.join(d, "t"), "--output_folder", os.path.join(d, "t_universal")]
                done = subprocess.run(command, capture_output=True, text=True)
                res["conversion"] = "ok" if done.returncode == 0 else done.stderr.strip().splitlines()[-1][-300:]
            dist.barrier()
            model2, opt2 = build(o)
            with torch.no_grad():
                for p in model2.parameters():
                    p.add_(1.0)
            plain = o.get("route") == "same"  # load_checkpoint of the saved tag itself, no universal conversion
            loading = config(
                o.get("lstage", stage), o.get("lbf16", bf16), universal=not plain, elastic=o.get("lelastic", False)
            )
            engine2, zero2, _, _ = deepspeed.initialize(model=model2, optimizer=opt2, config=loading)
            engine2.load_checkpoint(d, tag="t" if plain else "t_universal")
            if hasattr(zero2, "_lazy_init_hp_params_optimizer_state") and zero2.optimizer.state:
                zero2._hp_optimizer_states_linked = False  # link the moments as a first step would
                zero2._lazy_init_hp_params_optimizer_state()
            res["state after the load"] = sorted({k for s in zero2.optimizer.state.values() for k in s})
            res["lr after the load"] = [g["lr"] for g in zero2.optimizer.param_groups]
            got = full_state(engine2, keys)
            res["differ"] = [
                k
                for k in expected
                if (expected[k] is None) != (got[k] is None)
                or (expected[k] is not None and not torch.equal(expected[k].float(), got[k].float()))
            ]
        q.put((rank, "ok", res))
    except Exception:
        q.put((rank, "error", f"{res}\n{traceback.format_exc()[-1500:]}"))


def main(argv):
    o = {"width": 4, "opt": "adam", "stage": 1}
    for kv in argv:
        k, v = kv.split("=")
        o[k] = json.loads(v) if v[0] in "0123456789tf[{" else v
    d = tempfile.mkdtemp()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=worker, args=(r, 2, o, d, q)) for r in range(2)]
    for p in ps:
        p.start()
    try:
        out = [q.get(timeout=180) for _ in ps]
    except Exception as ex:
        out = [("?", "timeout", str(ex))]
    for p in ps:
        p.join(10)
        p.kill()
    shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(o), "->")
    for rank, status, detail in sorted(out, key=str):
        print("  ", rank, status, detail if status == "ok" else detail[:400] + " ... " + detail[-300:])


if __name__ == "__main__":
    main(sys.argv[1:])
