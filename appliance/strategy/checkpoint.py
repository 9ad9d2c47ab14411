"""ServerApp-side checkpoints: the global model as ``.npz`` and per-round metrics as JSON.

:meth:`~appliance.strategy.Strategy.start` hands artifacts to a
:class:`CheckpointSink`: ``checkpoints/round-NNNNN.npz`` every ``checkpoint_every``
rounds, ``model-final.npz`` when the run ends, and ``metrics.json`` after every round
(so an interrupted run still has its history). Arrays are written with
``allow_pickle=False`` (numpy's own ``.npy`` entries in a zip, readable with
``np.load(path, allow_pickle=False)``) and read back the same way; nothing is ever
unpickled.

This module encodes artifacts and defines the sink contract. Where artifacts are
kept is the sink's business: :class:`DirectorySink` writes a directory (local runs,
tests); a deployment's SuperLink supplies its own sink that stores them with the run.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from appliance.errors import StrategyError
from appliance.records import ArrayRecord

if TYPE_CHECKING:
    from appliance.strategy.base import Result

__all__ = [
    "FINAL_MODEL",
    "METRICS",
    "CheckpointError",
    "CheckpointSink",
    "Checkpointer",
    "DirectorySink",
    "check_artifact_name",
    "decode_npz",
    "encode_npz",
    "metrics_document",
    "round_checkpoint_name",
]

#: The final global model.
FINAL_MODEL = "model-final.npz"
#: Per-round metrics, failures and sampling of the run so far.
METRICS = "metrics.json"
#: Version tag of ``metrics.json``.
METRICS_FORMAT = "greenhouse-metrics/1"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}){0,7}")
_NPY = ".npy"


class CheckpointError(StrategyError):
    """A checkpoint could not be written or read (the sink failed, or a file is malformed)."""


def check_artifact_name(name: str) -> str:
    """Return ``name`` if it is a safe relative artifact path, e.g. ``checkpoints/round-00003.npz``.

    Components are letters, digits, ``._-``, never starting with a dot (so no ``..``),
    at most 8 deep.

    Raises:
        CheckpointError: the name is empty, absolute, or escapes its directory.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CheckpointError(f"artifact name {name!r} is not a safe relative path")
    return name


def round_checkpoint_name(server_round: int) -> str:
    """The artifact name of the checkpoint taken after ``server_round``."""
    return f"checkpoints/round-{server_round:05d}.npz"


@runtime_checkable
class CheckpointSink(Protocol):
    """Where a run's artifacts go. Implemented by :class:`DirectorySink` and the SuperLink."""

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as the artifact ``name``, replacing one of the same name.

        Contract:
            - ``name`` satisfies :func:`check_artifact_name`; a sink MUST refuse any
              other name (raise :class:`CheckpointError`).
            - The write MUST be atomic per artifact: a reader sees the old or the new
              bytes, never a partial file (``metrics.json`` is replaced every round).
            - Failures MUST raise (``OSError`` or :class:`CheckpointError`), never be
              swallowed: a run that should keep checkpoints stops when it cannot.
        """
        ...


class DirectorySink:
    """A :class:`CheckpointSink` writing files under ``directory`` (created if missing).

    Args:
        directory: where artifacts go; ``checkpoints/...`` becomes a subdirectory.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def put(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``directory/name`` atomically (temporary file, then rename).

        Raises:
            CheckpointError: ``name`` is not a safe relative path.
            OSError: the file system refused the write.
        """
        target = self.directory / check_artifact_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def encode_npz(arrays: ArrayRecord) -> bytes:
    """``arrays`` as ``.npz`` bytes (one ``NAME.npy`` entry per array, in order, no pickle).

    Raises:
        CheckpointError: an array name is not a safe relative path inside the zip.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            if not _NAME.fullmatch(name):
                raise CheckpointError(
                    f"array name {name!r} cannot be an .npz entry (letters, digits, '._-/' only)"
                )
            with archive.open(name + _NPY, "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)
    return buffer.getvalue()


def decode_npz(data: bytes) -> ArrayRecord:
    """Read ``.npz`` bytes written by :func:`encode_npz` (``allow_pickle=False``).

    Raises:
        CheckpointError: the bytes are not an ``.npz`` of plain numeric arrays.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return ArrayRecord({name: archive[name] for name in archive.files})
    except (OSError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"not a readable .npz checkpoint: {exc}") from exc


def _json_value(value: Any) -> Any:
    """Metric values for JSON: non-finite floats become the strings ``nan``/``inf``/``-inf``."""
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _metrics(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: _json_value(v) for k, v in record.items()}


def metrics_document(result: Result, *, strategy: str, complete: bool) -> dict[str, Any]:
    """The per-round history of ``result`` as a JSON-ready dict (``metrics.json``).

    Args:
        result: the run's result so far.
        strategy: the strategy's class name.
        complete: whether the run has finished.
    """
    rounds = sorted(
        set(result.train_metrics_clientapp)
        | set(result.evaluate_metrics_clientapp)
        | set(result.evaluate_metrics_serverapp)
        | set(result.train_failures)
        | set(result.sampling)
    )
    history = []
    for server_round in rounds:
        sampling = result.sampling.get(server_round)
        entry = {
            "round": server_round,
            "train": _metrics(result.train_metrics_clientapp.get(server_round)),
            "evaluate": _metrics(result.evaluate_metrics_clientapp.get(server_round)),
            "evaluate_serverapp": _metrics(result.evaluate_metrics_serverapp.get(server_round)),
            "train_failures": [
                {"node_id": f.node_id, "reason": f.reason}
                for f in result.train_failures.get(server_round, [])
            ],
            "evaluate_failures": [
                {"node_id": f.node_id, "reason": f.reason}
                for f in result.evaluate_failures.get(server_round, [])
            ],
            "sampling": None if sampling is None else sampling.to_dict(),
        }
        history.append(entry)
    return {
        "format": METRICS_FORMAT,
        "strategy": strategy,
        "complete": complete,
        "rounds": history,
    }


class Checkpointer:
    """Writes a run's artifacts to a sink as :meth:`Strategy.start` progresses.

    Args:
        sink: where the artifacts go.
        every: save the model after every ``every``-th round (``None``: only the final one).
        strategy: the strategy's class name, recorded in ``metrics.json``.

    Raises:
        ValueError: ``every`` is not a positive integer.
    """

    def __init__(self, sink: CheckpointSink, *, every: int | None, strategy: str) -> None:
        if every is not None and (isinstance(every, bool) or every < 1):
            raise ValueError(f"checkpoint_every must be >= 1, got {every}")
        self.sink = sink
        self.every = every
        self.strategy = strategy
        self.written: list[str] = []  # artifact names, first write order

    def _put(self, name: str, data: bytes) -> None:
        try:
            self.sink.put(name, data)
        except OSError as exc:
            raise CheckpointError(f"could not store {name}: {exc}") from exc
        if name not in self.written:
            self.written.append(name)

    def _put_metrics(self, result: Result, *, complete: bool) -> None:
        document = metrics_document(result, strategy=self.strategy, complete=complete)
        text = json.dumps(document, indent=1, allow_nan=False, sort_keys=False)
        self._put(METRICS, text.encode("utf-8"))

    def after_round(self, server_round: int, result: Result) -> None:
        """Save the model if ``server_round`` is a checkpoint round; always save the metrics.

        Raises:
            CheckpointError: the sink failed.
        """
        if self.every is not None and server_round % self.every == 0:
            self._put(round_checkpoint_name(server_round), encode_npz(result.arrays))
        self._put_metrics(result, complete=False)

    def finish(self, result: Result) -> None:
        """Save the final model and the complete metrics.

        Raises:
            CheckpointError: the sink failed.
        """
        self._put(FINAL_MODEL, encode_npz(result.arrays))
        self._put_metrics(result, complete=True)
