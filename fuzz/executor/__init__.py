"""Running Cases on real ranks: the warm pool (``pool``) and one rank's loop (``worker``)."""

from shardfuzz.executor.pool import CaseAbandoned, PoolStartError, RankPool

__all__ = ["CaseAbandoned", "PoolStartError", "RankPool"]
