"""Mutants that only a pipelined side exposes (``PP``): checkpoint and wrapping code that is right for a model in one
piece and wrong for one cut into stages. They join ``mutants.CATALOGUE``."""

from __future__ import annotations

from shardfuzz.targets.dcp import DcpTarget

__all__ = ["LastStageSavedBeforeItsStep", "StagePlanByPosition"]


class LastStageSavedBeforeItsStep(DcpTarget):
    """Checkpoint code for pipelined models that takes the last stage's weights as they were before its last
    optimizer step (as a trainer that checkpoints each stage when its part of the schedule ends, the last stage's
    step still to come, would): that stage's layers are saved a step stale, with no error. Only a pipelined save
    side (``PP``) has a last stage of its own."""

    def __init__(self):
        super().__init__()
        self._before_step: dict = {}

    def shard(self, module, side, *, group, mesh, default):
        model = default(module, side, group=group, mesh=mesh)
        stage = getattr(model, "pipeline_stage", None)
        self._before_step = {}
        if stage is not None and stage.is_last and not stage.is_first:

            def remember(_module, _inputs):  # each step's forward comes before its optimizer step
                self._before_step = {name: p.detach().clone() for name, p in model.named_parameters()}

            model.register_forward_pre_hook(remember)
        return model

    def save(self, state_dict, *, checkpoint_id, process_group):
        stale = {key: self._before_step.get(key, value) for key, value in state_dict["model"].items()}
        super().save({**state_dict, "model": stale}, checkpoint_id=checkpoint_id, process_group=process_group)


class StagePlanByPosition(DcpTarget):
    """Wrapping code for tensor parallelism inside pipeline stages that applies the first stage's plan to every stage
    by position (each stage's i-th root child split as the first stage's i-th is), as code written for stages that
    are alike (repeated transformer blocks) does: right for the first stage and for stages shaped like it, wrong
    where a later stage's own plan differs. DCP reshards the values into whatever layout the stage has, so the state
    compares equal and only the ``layout`` oracle, which checks each stage against the side's plan, sees it."""

    def shard(self, module, side, *, group, mesh, default):
        import attrs
        import torch

        from shardfuzz.case import PP
        from shardfuzz.rank.portable.sharding import stage_bounds

        engine = side.engine
        if not isinstance(engine, PP) or not engine.plan:
            return default(module, side, group=group, mesh=mesh)
        names = [name for name, _ in module.named_children()]
        bounds = stage_bounds(len(names), side.mesh_shape[0])
        stage = mesh.get_coordinate()[0]
        first_stage, by_position = {}, {}
        for path, style in engine.plan:
            top, _, rest = path.partition(".")
            position = names.index(top)
            if position >= bounds[1]:  # not the first stage's
                continue
            first_stage[path] = style
            if style != "experts" and bounds[stage] + position < bounds[stage + 1]:
                mapped = ".".join(filter(None, (names[bounds[stage] + position], rest)))
                if isinstance(_submodule(module, mapped), torch.nn.Linear):
                    by_position[mapped] = style
        if not first_stage:  # nothing to repeat: each stage as planned
            return default(module, side, group=group, mesh=mesh)
        plan = sorted({**first_stage, **by_position}.items())  # each stage keeps its own children's entries
        return default(module, attrs.evolve(side, engine=attrs.evolve(engine, plan=plan)), group=group, mesh=mesh)


def _submodule(module, path: str):
    """``module.get_submodule(path)``, or None where there is none."""
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
