"""Running Cases on real ranks: the warm pool (``pool``) and one rank's loop (``worker``)."""

from shardfuzz.executor.pool import PoolStartError, RankPool

__all__ = ["PoolStartError", "RankPool"]
