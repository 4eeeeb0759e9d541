"""The fleet's example database where no Redis is given: the driver's own, served to every campaign.

``DatabaseHost`` opens the database the driver's ``--database`` names (a directory, with ``--replay-from``
beside it) and runs, as a Ray actor, on the driver's machine; ``HeldDatabase`` is the Hypothesis
``ExampleDatabase`` each campaign uses, each call a round trip to the host. What one campaign saves
(a failing example, say) the others replay when they next start, as with a shared Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis.database import ExampleDatabase

__all__ = ["DatabaseHost", "HeldDatabase"]


class DatabaseHost:
    """The database ``spec`` names (``search.database.open_database``), on the machine this runs on."""

    def __init__(self, spec: str, replay_from: str | None = None):
        from shardfuzz.search.database import open_database

        self.database = open_database(spec, replay_from=replay_from)

    def save(self, key: bytes, value: bytes) -> None:
        self.database.save(key, value)

    def fetch(self, key: bytes) -> list[bytes]:
        return list(self.database.fetch(key))

    def delete(self, key: bytes, value: bytes) -> None:
        self.database.delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.database.move(src, dest, value)


class HeldDatabase(ExampleDatabase):
    """A campaign's view of the ``DatabaseHost`` actor named ``name`` (found by name when first used: a handle
    would have to be an argument of the campaign's actor, which Ray cannot restart then)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._host = None

    @property
    def host(self):
        if self._host is None:
            import ray

            self._host = ray.get_actor(self.name)
        return self._host

    def __repr__(self) -> str:
        return "HeldDatabase(the fleet driver's)"

    def save(self, key: bytes, value: bytes) -> None:
        _wait(self.host.save.remote(key, value))

    def fetch(self, key: bytes) -> Iterable[bytes]:
        yield from _wait(self.host.fetch.remote(key))

    def delete(self, key: bytes, value: bytes) -> None:
        _wait(self.host.delete.remote(key, value))

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        _wait(self.host.move.remote(src, dest, value))


def _wait(reference):
    import ray

    return ray.get(reference)
