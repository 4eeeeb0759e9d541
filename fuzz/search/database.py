"""Where a campaign keeps its Hypothesis examples: a directory, a shared Redis, or nothing.

``open_database("redis://host:6379/0")`` lets campaigns on several machines
share one database: a failure one of them saves is replayed first by the
others. ``replay_from`` adds a read-only database beside the writable one, for
replaying someone else's findings without writing into their database.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatabaseError", "open_database", "on_a_server", "DEFAULT_DATABASE", "REDIS_KEY_PREFIX"]

DEFAULT_DATABASE = ".shardfuzz/examples"
#: Keys in a shared Redis start with this, apart from other Hypothesis users of the same server.
REDIS_KEY_PREFIX = b"shardfuzz-example:"


class DatabaseError(ValueError):
    """A database spec that cannot be opened; the message names it and says why."""


def open_database(spec: str | None, *, replay_from: str | None = None):
    """The Hypothesis ``ExampleDatabase`` for ``spec`` ("none", a directory, ``redis://``), or None."""
    from hypothesis.database import MultiplexedDatabase, ReadOnlyDatabase

    main = _open(spec) if spec and spec.lower() != "none" else None
    if replay_from is None:
        return main
    shared = ReadOnlyDatabase(_open(replay_from))
    return shared if main is None else MultiplexedDatabase(main, shared)


def on_a_server(spec: str) -> bool:
    """Whether ``spec`` names a database on a server (Redis), which every machine opens itself, rather than a folder."""
    return spec.startswith(("redis://", "rediss://", "unix://"))


def _open(spec: str):
    if on_a_server(spec):
        return _redis(spec)
    if "://" in spec:
        raise DatabaseError(f"database {spec!r}: use a directory path, redis://HOST:PORT/N, or 'none'")
    from hypothesis.database import DirectoryBasedExampleDatabase

    path = Path(spec)
    if path.exists() and not path.is_dir():
        raise DatabaseError(f"database {spec!r} is a file, not a directory")
    return DirectoryBasedExampleDatabase(str(path))


def _redis(url: str):
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError as exc:
        raise DatabaseError(
            f"database {url!r} needs the redis client: pip install 'shardfuzz[redis]' ({exc})"
        ) from None
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise DatabaseError(f"database {url!r}: cannot reach the Redis server ({exc})") from None
    return RedisExampleDatabase(client, key_prefix=REDIS_KEY_PREFIX)
