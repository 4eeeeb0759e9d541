"""A case in one line, as people read it in reports, shrink results and bug reports."""

from __future__ import annotations

from shardfuzz.case import PP, TP, Case, Dcp, Leaf, Side, UserModel, ZeRO

__all__ = ["describe"]


def describe(case: Case) -> str:
    if isinstance(case.model, UserModel):
        layers = f"model {case.model.factory}"
    else:
        layers = " > ".join(node.describe(width) for _, node, width in case.model.walk() if isinstance(node, Leaf))
    dtype = f" ({case.model.dtype})" if case.model.dtype != "float32" else ""
    storage = "" if case.storage == Dcp() else f"; storage {case.storage!r}"
    if case.training is not None:
        storage += (
            f"; training state: {case.training.scheduler} LR{' + grad scaler' if case.training.grad_scaler else ''}"
        )
    if case.consolidates_zero:
        storage += "; loaded through zero_to_fp32 (the model alone)"
    if case.loop.describe():
        storage += f"; loop: {case.loop.describe()}"
    return (
        f"{layers}{dtype}; save {_side(case.save)}, load {_side(case.load)}; "
        f"{type(case.optimizer).__name__}, {case.steps} steps; checks {list(case.checks) or '-'}"
        f"{'; load ' + case.load_mutation if case.load_mutation else ''}{storage}"
    )


def _side(side: Side) -> str:
    mesh = f" mesh {side.mesh_shape}" if len(side.mesh_shape) == 2 else ""
    if isinstance(side.engine, (TP, PP)):
        styles = ",".join(f"{path}:{style[:3]}" for path, style in side.engine.plan)
        mesh += (
            f"{' fsdp' if side.engine.fsdp else ''}{f' [{styles}]' if styles or isinstance(side.engine, TP) else ''}"
        )
    checkpointed = f" ac-{side.activation_checkpointing}[{','.join(side.checkpointed)}]" if side.checkpointed else ""
    compiled = (" compiled" if side.compiled else "") + (" meta-init" if side.meta_init else "")
    compiled += (f" mp-{side.mixed_precision}" if side.mixed_precision != "none" else "") + (
        " offload" if side.offload_params else ""
    )
    compiled += " bn-fp32" if side.batchnorm_fp32 else ""
    if isinstance(side.engine, ZeRO):
        mesh += f" stage {side.engine.stage}{' bf16' if side.engine.bf16 else ''}{' elastic' if side.engine.elastic else ''}"
    device = " on cuda" if side.device == "cuda" else ""
    return f"{type(side.engine).__name__}x{side.world_size}{device}{mesh} {side.state_dict}{checkpointed}{compiled}"
