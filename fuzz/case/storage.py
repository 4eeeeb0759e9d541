"""How the checkpoint is written and read: DCP (with its writer options), torch.save, dcp_to_torch_save, DCP's Hugging
Face safetensors format."""

from __future__ import annotations

from typing import ClassVar, Union

from attrs import field, frozen
from attrs.validators import ge, in_, instance_of, le

#: ``save``: ``dcp.save``/``dcp.load``; ``legacy``: the older ``save_state_dict``/``load_state_dict``
#: with an explicit ``FileSystemWriter``/``FileSystemReader``; ``async``: ``dcp.async_save``, whose
#: write may still run while the save side goes on training (continuation).
DCP_APIS = ("save", "legacy", "async")


@frozen
class Dcp:
    """A DCP checkpoint directory written through ``FileSystemWriter`` with these options."""

    api: str = field(default="save", validator=in_(DCP_APIS))
    single_file_per_rank: bool = field(default=True, validator=instance_of(bool))
    thread_count: int = field(default=1, validator=[instance_of(int), ge(1), le(4)])
    sync_files: bool = field(default=True, validator=instance_of(bool))

    #: Whether the checkpoint holds the model's state dict alone (a format of tensors only).
    model_only: ClassVar[bool] = False

    def dimensions(self) -> dict[str, str]:
        """Its values along the storage dimensions of ``case.dimensions``."""
        return {
            "storage": f"dcp-{self.api}",
            "writer_single_file_per_rank": str(self.single_file_per_rank).lower(),
            "writer_threads": "1" if self.thread_count == 1 else "2+",
            "writer_sync_files": str(self.sync_files).lower(),
        }


@frozen
class TorchSave:
    """One file: the save side's full state dict, written by its rank 0 with ``torch.save``, read
    with ``torch.load(weights_only=True)`` (by rank 0 only when the load side broadcasts it)."""

    model_only: ClassVar[bool] = False

    def dimensions(self) -> dict[str, str]:
        return {"storage": "torch-save", **_NO_WRITER}


@frozen
class DcpToTorchSave:
    """``dcp.save``, then ``format_utils.dcp_to_torch_save`` on one process with no process
    group; the load side reads that file with ``torch.load(weights_only=True)`` as a full state dict."""

    model_only: ClassVar[bool] = False

    def dimensions(self) -> dict[str, str]:
        return {"storage": "dcp-to-torch-save", **_NO_WRITER}


@frozen
class HfSafetensors:
    """DCP's Hugging Face format: ``HuggingFaceStorageWriter(save_distributed=True)`` (every rank writes its shards as
    safetensors files) and ``HuggingFaceStorageReader``; ``consolidated``: the writer also consolidates the shards into
    whole-tensor files (``enable_consolidation``), which the load reads, and which rank 0 reads back with
    ``safetensors`` itself to compare with the full state (oracle ``consolidated-files``). Safetensors hold tensors
    only, so the checkpoint is the model's state dict alone, as a Hugging Face export is: the load side loads its model
    and its optimizer stays as built."""

    consolidated: bool = field(default=False, validator=instance_of(bool))
    model_only: ClassVar[bool] = True

    def dimensions(self) -> dict[str, str]:
        return {"storage": "hf-safetensors-consolidated" if self.consolidated else "hf-safetensors", **_NO_WRITER}


#: A whole-file storage has no DCP writer options.
_NO_WRITER = {"writer_single_file_per_rank": "n/a", "writer_threads": "n/a", "writer_sync_files": "n/a"}


Storage = Union[Dcp, TorchSave, DcpToTorchSave, HfSafetensors]
STORAGE_CLASSES = (Dcp, TorchSave, DcpToTorchSave, HfSafetensors)
