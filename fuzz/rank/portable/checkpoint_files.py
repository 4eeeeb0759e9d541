"""How the default target writes and reads a checkpoint: one class per ``Case.storage`` variant
(``rank.checkpoint_io.storage_target`` picks the class for a case).

Each class is a ``CheckpointTarget`` (``save``/``load`` on one side's ranks) plus
``finish_save``, which the round-trip calls before the world barrier: only the
async writer has anything to wait for there, and waiting late is the point (the
save side trains on while the write runs). The exported scripts copy these
classes' source as it is, so the classes import what they use themselves.
"""

from __future__ import annotations

__all__ = ["DcpFiles", "TorchSaveFile", "DcpThenTorchSave", "HfFiles", "STORAGE_SOURCES"]


class DcpFiles:
    """A DCP directory through ``FileSystemWriter``/``FileSystemReader``, by ``dcp.save``,
    ``dcp.save_state_dict`` (the older names) or ``dcp.async_save``."""

    def __init__(self, api="save", single_file_per_rank=True, thread_count=1, sync_files=True):
        self.api = api
        self.writer_options = dict(
            single_file_per_rank=single_file_per_rank, thread_count=thread_count, sync_files=sync_files
        )
        self.pending = []  # async saves not yet waited for (a second may start while the first is in flight)

    def save(self, state_dict, *, checkpoint_id, process_group):
        import torch.distributed.checkpoint as dcp

        writer = dcp.FileSystemWriter(checkpoint_id, **self.writer_options)
        if self.api == "legacy":
            dcp.save_state_dict(state_dict, writer, process_group=process_group)
        elif self.api == "async":
            self.pending.append(dcp.async_save(state_dict, storage_writer=writer, process_group=process_group))
        else:
            dcp.save(state_dict, storage_writer=writer, process_group=process_group)

    def finish_save(self):
        pending, self.pending = self.pending, []
        for future in pending:  # in the order they started
            getattr(future, "upload_completion", future).result()  # a Future, or torch's AsyncSaveResponse

    def load(self, state_dict, *, checkpoint_id, process_group, planner=None):
        import torch.distributed.checkpoint as dcp

        reader = dcp.FileSystemReader(checkpoint_id)
        if self.api == "legacy":
            dcp.load_state_dict(state_dict, reader, process_group=process_group, planner=planner)
        else:
            dcp.load(state_dict, storage_reader=reader, process_group=process_group, planner=planner)

    def load_partial(self, state_dict, *, checkpoint_id, process_group):
        """A lenient load: what the checkpoint lacks stays as it is."""
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        planner = DefaultLoadPlanner(allow_partial_load=True)
        self.load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group, planner=planner)


class TorchSaveFile:
    """The side's full state dict in one ``torch.save`` file written by the group's first rank;
    every load rank reads it with ``torch.load(weights_only=True)`` and takes its contents."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        import os

        import torch
        import torch.distributed as dist

        if dist.get_rank(process_group) == 0:
            os.makedirs(checkpoint_id, exist_ok=True)
            torch.save(state_dict, os.path.join(checkpoint_id, "state.pt"))

    def finish_save(self):
        pass

    def load(self, state_dict, *, checkpoint_id, process_group):
        import os

        import torch

        state_dict.update(torch.load(os.path.join(checkpoint_id, "state.pt"), weights_only=True))

    def load_partial(self, state_dict, *, checkpoint_id, process_group):
        """Only the parts the template asks for (a lenient load asks for the model alone); the keys a lenient
        load leaves alone are not in the file, and ``set_model_state_dict(strict=False)`` leaves them."""
        import os

        import torch

        saved = torch.load(os.path.join(checkpoint_id, "state.pt"), weights_only=True)
        state_dict.update({part: saved[part] for part in list(state_dict) if part in saved})


class DcpThenTorchSave(TorchSaveFile):
    """``dcp.save``, then ``format_utils.dcp_to_torch_save`` by the group's first rank alone (no
    process group: the conversion tool's own path); loaded like ``TorchSaveFile``."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        import os

        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp.save(state_dict, checkpoint_id=os.path.join(checkpoint_id, "dcp"), process_group=process_group)
        dist.barrier(group=process_group)  # every rank's files are written before the conversion reads them
        if dist.get_rank(process_group) == 0:
            dcp_to_torch_save(os.path.join(checkpoint_id, "dcp"), os.path.join(checkpoint_id, "state.pt"))


class HfFiles:
    """DCP's Hugging Face safetensors format: every rank writes its shards (``save_distributed``), consolidated into
    whole-tensor files in the folder itself where ``consolidated`` (the shards then go to ``sharded/``); read back with
    ``HuggingFaceStorageReader``. The state dict it is handed holds the model alone (safetensors hold tensors)."""

    def __init__(self, consolidated=False):
        self.consolidated = consolidated

    def save(self, state_dict, *, checkpoint_id, process_group):
        import torch.distributed.checkpoint as dcp

        writer = dcp.HuggingFaceStorageWriter(
            checkpoint_id, save_distributed=True, enable_consolidation=self.consolidated
        )
        dcp.save(state_dict, storage_writer=writer, process_group=process_group)

    def finish_save(self):
        pass

    def load(self, state_dict, *, checkpoint_id, process_group, planner=None):
        import torch.distributed.checkpoint as dcp

        reader = dcp.HuggingFaceStorageReader(checkpoint_id)
        dcp.load(state_dict, storage_reader=reader, process_group=process_group, planner=planner)

    def load_partial(self, state_dict, *, checkpoint_id, process_group):
        """A lenient load: what the checkpoint lacks stays as it is."""
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        planner = DefaultLoadPlanner(allow_partial_load=True)
        self.load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group, planner=planner)

    def consolidated_files(self, checkpoint_id):
        """The consolidated files' tensors as ``safetensors`` itself reads them (name -> tensor)."""
        import glob
        import os

        from safetensors.torch import load_file

        tensors = {}
        for path in sorted(glob.glob(os.path.join(checkpoint_id, "*.safetensors"))):
            tensors.update(load_file(path))
        return tensors


#: The classes above, in the order an exported script defines them (a subclass after its base).
STORAGE_SOURCES = ("DcpFiles", "TorchSaveFile", "DcpThenTorchSave", "HfFiles")
