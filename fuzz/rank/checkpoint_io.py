"""The checkpoint I/O of a case's storage variant: a ``Case.storage`` value -> the class that writes and reads it."""

from __future__ import annotations

from shardfuzz.case import Dcp, DcpToTorchSave, HfSafetensors, TorchSave
from shardfuzz.rank.portable.checkpoint_files import DcpFiles, DcpThenTorchSave, HfFiles, TorchSaveFile

__all__ = ["storage_target"]


def storage_target(storage):
    """The target that writes and reads ``storage`` (a ``Case.storage`` value)."""
    if isinstance(storage, Dcp):
        return DcpFiles(storage.api, storage.single_file_per_rank, storage.thread_count, storage.sync_files)
    if isinstance(storage, TorchSave):
        return TorchSaveFile()
    if isinstance(storage, DcpToTorchSave):
        return DcpThenTorchSave()
    if isinstance(storage, HfSafetensors):
        return HfFiles(consolidated=storage.consolidated)
    raise TypeError(f"unknown storage {storage!r}")
