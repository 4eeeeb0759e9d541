"""The default target: ``torch.distributed.checkpoint``'s own save and load."""

from __future__ import annotations

from shardfuzz.targets.support import NO_LOAD_PARTIAL, TargetSupport

__all__ = ["DcpTarget"]


class DcpTarget:
    """``torch.distributed.checkpoint.save`` / ``load`` (or their older names)."""

    @property
    def support(self) -> TargetSupport:
        # Storage variants replace DCP's own I/O: the default target itself takes them, a subclass
        # (a mutant, a user's wrapper) does its own I/O.
        # A subclass that changes load without its own load_partial would see its lenient cases bypass it.
        partial = type(self).load is DcpTarget.load or type(self).load_partial is not DcpTarget.load_partial
        return TargetSupport(
            storages=type(self) is DcpTarget,
            lenient_loads=partial,
            reasons={} if partial else {"lenient_loads": NO_LOAD_PARTIAL},
        )

    def save(self, state_dict, *, checkpoint_id, process_group):
        import torch.distributed.checkpoint as dcp

        if hasattr(dcp, "save"):
            dcp.save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        else:  # torch < 2.2 spelled it save_state_dict with an explicit writer
            dcp.save_state_dict(state_dict, dcp.FileSystemWriter(checkpoint_id), process_group=process_group)

    def load(self, state_dict, *, checkpoint_id, process_group):
        _read(state_dict, checkpoint_id, process_group)

    def load_partial(self, state_dict, *, checkpoint_id, process_group):
        """``load`` that leaves the keys the checkpoint lacks as they are (``DefaultLoadPlanner(allow_partial_load=True)``)."""
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        _read(state_dict, checkpoint_id, process_group, planner=DefaultLoadPlanner(allow_partial_load=True))


def _read(state_dict, checkpoint_id, process_group, planner=None) -> None:
    """``dcp.load`` (``load_state_dict`` with an explicit reader before torch 2.2), with ``planner`` where given."""
    import torch.distributed.checkpoint as dcp

    if hasattr(dcp, "load"):
        dcp.load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group, planner=planner)
    else:
        dcp.load_state_dict(
            state_dict, dcp.FileSystemReader(checkpoint_id), process_group=process_group, planner=planner
        )
