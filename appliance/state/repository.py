"""The :class:`State` facade: one object for the SuperLink's persistent state.

``State`` combines the node, run/bundle, message, reply and log operations
(each in its own private module) over one engine and one blob store, and owns
the lifecycle: :meth:`State.open` creates missing tables and checks the schema
version; :meth:`State.recover_after_restart` applies the restart rules;
:meth:`State.close` releases the connection pool.

Contract for every method (see each docstring for its MUST rules and errors):

* it runs in one short transaction and is safe to call from many threads (a
  gRPC thread pool); nothing is cached between calls;
* it returns frozen records (``Node``, ``Run``, ``StoredMessage``...), never ORM
  objects, and raises only :class:`~appliance.state.errors.StateError` subclasses
  (plus ``InvalidArgument``, also a ``ValueError``);
* timestamps come from the clock given to :meth:`State.open` unless a ``now``
  argument is passed (unix seconds, float).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.state._artifacts import ArtifactStore
from appliance.state._logs import LogStore
from appliance.state._nodes import NodeStore
from appliance.state._privacy import PrivacyStore
from appliance.state._receipts import ReceiptStore
from appliance.state._replies import ReplyStore
from appliance.state._runs import RunStore
from appliance.state._store import create_state_engine, parse_url
from appliance.state.blobs import BlobStore
from appliance.state.errors import BlobError, InvalidArgument
from appliance.state.values import Recovery

__all__ = ["DEFAULT_DB_NAME", "RESTART_REASON", "State", "default_url"]

#: File name of the default SQLite database inside the data dir.
DEFAULT_DB_NAME = "state.db"
#: Reason given to runs that were in flight when the SuperLink stopped.
RESTART_REASON = "superlink restarted"


def default_url(data_dir: Path) -> str:
    """The default database URL: SQLite file ``state.db`` in ``data_dir``."""
    return f"sqlite:///{Path(data_dir).resolve() / DEFAULT_DB_NAME}"


class State(NodeStore, RunStore, ReplyStore, LogStore, ArtifactStore, ReceiptStore, PrivacyStore):
    """The SuperLink's state: nodes, runs, bundles, messages, run logs, events, receipts.

    Create it with :meth:`State.open`, not the constructor.
    """

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        data_dir: Path,
        clock: Callable[[], float] = time.time,
        spare_bytes: int = 0,
    ) -> State:
        """Open (creating tables if missing) the state at ``url``.

        Args:
            url: ``sqlite:///PATH`` or ``postgresql+psycopg://USER:PASS@HOST/DB``;
                ``None`` means :func:`default_url` (``data_dir/state.db``).
            data_dir: the SuperLink's data directory (``0700``); blobs go to
                ``data_dir/blobs``.
            clock: returns the current unix time in seconds (injected for tests).
            spare_bytes: bytes of handed-out message bodies the blob store keeps as
                files to overwrite (see :class:`BlobStore`); 0 keeps none.

        Returns:
            The open state. It does not recover by itself: a SuperLink calls
            :meth:`recover_after_restart` once at startup.

        Raises:
            InvalidArgument: an unsupported or malformed URL.
            StorageError: the database is unreachable or has a newer schema.
            BlobError: the blob directory cannot be created.
        """
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise BlobError(f"cannot create data dir {data_dir}: {exc}") from exc
        parsed = parse_url(default_url(data_dir) if url is None else url)
        blobs = BlobStore(data_dir / "blobs", spare_bytes=spare_bytes)
        engine = create_state_engine(parsed)
        state = cls(engine, parsed, blobs, clock)
        try:
            state._init_schema()
        except BaseException:
            engine.dispose()
            raise
        return state

    def close(self) -> None:
        """Release all database connections. The object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def recover_after_restart(
        self, reason: str = RESTART_REASON, *, now: float | None = None
    ) -> Recovery:
        """Apply the restart rules; a SuperLink calls this once at startup.

        MUST mark every node offline (no session survives a restart) and every
        pending, starting or running run ``failed`` with ``reason`` (its ServerApp
        process is gone): such a run is never silently lost. Nodes, finished runs,
        bundles and messages are kept.

        Returns:
            The failed run ids and how many nodes were marked offline.

        Raises:
            StorageError: the database failed.
        """
        offline = self.mark_all_nodes_offline()
        failed = self.fail_in_flight_runs(reason, now=now)
        return Recovery(failed_run_ids=tuple(failed), nodes_marked_offline=offline)

    def gc_blobs(self, *, min_age_s: float = 3600.0, now: float | None = None) -> list[str]:
        """Delete blobs no message or bundle references (older than ``min_age_s``).

        The age guard keeps blobs that were just stored and are about to be
        referenced by a row (a concurrent upload). Ages are file modification
        times, so ``now`` defaults to the wall clock, not the state's clock.

        Returns:
            The deleted blobs' SHA-256.

        Raises:
            InvalidArgument: negative ``min_age_s``.
            StorageError, BlobError: the database or file system failed.
        """
        if min_age_s < 0:
            raise InvalidArgument(f"min_age_s must be >= 0, got {min_age_s}")
        keep = self.referenced_blobs()
        return self._blobs.gc(keep, min_age_s=min_age_s, now=now)
