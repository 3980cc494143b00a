"""Advisory locks on results databases, so that ``iotml run`` never deletes a database a live stream is writing.

A running stream holds a shared ``flock`` on ``<database>.lock`` for every SQLite sink it writes, for its whole run;
``iotml run``, which starts from an empty database, takes the same locks exclusively, without waiting, before it
deletes anything, and holds them until it ends. Whoever finds a lock taken refuses with ``ResultsInUse``. The kernel
drops a lock with its process, so a killed stream leaves none behind (the empty ``.lock`` file stays, harmless).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from inference_pipeline.config import ConfigError
from inference_pipeline.connectors.sqlite import results_path


class ResultsInUse(ConfigError):
    """A results database is locked by another running pipeline or job."""


def lock_path(database: Path) -> Path:
    """The lock file of a results database: ``<database>.lock`` beside it."""
    database = database.expanduser().resolve()
    return database.with_name(database.name + ".lock")


def sqlite_paths(sinks: Mapping[str, Any], work_path: Path) -> list[Path]:
    """The database file of every SQLite sink in ``sinks`` (a config's ``sinks`` section)."""
    paths = (results_path({name: settings}, work_path) for name, settings in sinks.items())
    return sorted({path for path in paths if path is not None})


@contextlib.contextmanager
def hold_results(databases: Iterable[Path], exclusive: bool = False) -> Iterator[None]:
    """While inside, hold the lock of every database: shared to write one (streams), exclusive to replace one
    (``iotml run``). Raises ``ResultsInUse`` at once, holding none, where another process holds a conflicting lock."""
    with contextlib.ExitStack() as held:
        for database in databases:
            held.enter_context(_hold(database, exclusive))
        yield


@contextlib.contextmanager
def _hold(database: Path, exclusive: bool) -> Iterator[None]:
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "a running stream; stop it" if exclusive else "a running `iotml run` replacing it; wait for it"
            raise ResultsInUse(f"results database {database} is in use by {holder} or write the results elsewhere"
                               ) from None
        yield
    finally:
        os.close(descriptor)
