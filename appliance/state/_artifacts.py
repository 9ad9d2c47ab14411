"""Run artifacts: the files a run's ServerApp saves (checkpoints, final model, metrics).

Guarantees: a name is saved atomically (the bytes are in the blob store before the
row points at them) and saving it again replaces it; artifacts stay after the run
ends, for the submitting data scientist to pull.
"""

from __future__ import annotations

from sqlalchemy import select

from appliance.state._messages import blobs_in_use
from appliance.state._store import Store, check_id, check_text
from appliance.state.errors import InvalidArgument, NotFound, RunNotFound

__all__ = ["ArtifactNotFound", "ArtifactStore"]
from appliance.state.models import ArtifactRow, RunRow
from appliance.state.values import Artifact, BlobRef

MAX_ARTIFACT_NAME_CHARS = 256


class ArtifactNotFound(NotFound):
    """No artifact of that name in that run."""

    kind = "artifact"


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        run_id=row.run_id, name=row.name, sha256=row.sha256, size=row.size,
        created_at=row.created_at,
    )  # fmt: skip


class ArtifactStore(Store):
    """Artifact operations of :class:`~appliance.state.State`."""

    def put_artifact(
        self, run_id: int, name: str, blob: BlobRef, *, now: float | None = None
    ) -> Artifact:
        """Point ``name`` of ``run_id`` at ``blob`` (already in the blob store).

        Raises:
            InvalidArgument: a malformed name, or a blob that is not stored.
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        check_text(name, "artifact name", MAX_ARTIFACT_NAME_CHARS)
        if not self._blobs.exists(blob.sha256):
            raise InvalidArgument(f"artifact {name!r} points at a blob that is not stored")
        with self._write() as session:
            if session.get(RunRow, run_id) is None:
                raise RunNotFound(run_id)
            row = session.get(ArtifactRow, (run_id, name))
            if row is None:
                row = ArtifactRow(run_id=run_id, name=name)
                session.add(row)
            replaced = row.sha256 if row.sha256 != blob.sha256 else None
            row.sha256, row.size, row.created_at = blob.sha256, blob.size, self._now(now)
            session.flush()
            saved = _artifact(row)
        if replaced is not None:  # the previous version of a rewritten file (metrics.json)
            self._blobs.delete_unreferenced([replaced], self._referenced)
        return saved

    def _referenced(self, shas: set[str]) -> set[str]:
        with self._read() as session:
            return blobs_in_use(session.connection(), shas)

    def list_artifacts(self, run_id: int) -> list[Artifact]:
        """A run's artifacts, by name.

        Raises:
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        with self._read() as session:
            if session.get(RunRow, run_id) is None:
                raise RunNotFound(run_id)
            rows = session.scalars(
                select(ArtifactRow).where(ArtifactRow.run_id == run_id).order_by(ArtifactRow.name)
            )
            return [_artifact(row) for row in rows]

    def get_artifact(self, run_id: int, name: str) -> Artifact:
        """One artifact of a run.

        Raises:
            ArtifactNotFound: no artifact of that name in that run.
        """
        check_id(run_id, "run_id")
        with self._read() as session:
            row = session.get(ArtifactRow, (run_id, name))
            if row is None:
                raise ArtifactNotFound(f"{name!r} of run {run_id}")
            return _artifact(row)

    def artifact_blobs(self) -> set[str]:
        """SHA-256 of every blob an artifact references (kept by blob gc)."""
        with self._read() as session:
            return set(session.scalars(select(ArtifactRow.sha256).distinct()))
