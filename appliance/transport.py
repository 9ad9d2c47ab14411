"""Moving frames over streaming RPCs: chunking, bounded reassembly, reply digests.

Message bodies travel as a head (metadata, sizes) followed by data chunks, so a
body is never limited by gRPC's maximum message size. :class:`Assembler` collects
chunks into one buffer and refuses, with :class:`TransportError`, anything longer
than declared or than the configured maximum: a peer cannot make the receiver
allocate more than it agreed to.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

from appliance.errors import ApplianceError

__all__ = [
    "CHUNK_BYTES",
    "REPLY_SIGNATURE_METHOD",
    "Assembler",
    "TransportError",
    "iter_chunks",
    "reply_digest",
    "witness_key_name",
]

#: The label a node's reply signature is bound to (certs envelope of kind REPLY).
REPLY_SIGNATURE_METHOD = "/greenhouse.fleet.v1.Fleet/PushReply"
#: Bytes per data chunk on the wire (well under gRPC's default 4 MiB message limit).
CHUNK_BYTES = 1024 * 1024
_REPLY_DIGEST = struct.Struct(">4s32s?q32s32s")


def witness_key_name(node_name: str) -> str:
    """The key name a site's audit witness cosigns under: its node name, made a valid
    signed-note key name (no spaces, ``+`` or controls). The SuperLink accepts a
    node's cosignatures only under this name, so one site cannot cosign as another.
    """
    return "".join("-" if c.isspace() or c == "+" or ord(c) < 32 else c for c in node_name)


class TransportError(ApplianceError):
    """A streamed body broke its framing (too long, too short, out of order)."""


def iter_chunks(data: bytes | bytearray | memoryview, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (none for empty data)."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


class Assembler:
    """Collects a body of exactly ``expected`` bytes (at most ``max_bytes``) from chunks.

    Raises:
        TransportError: ``expected`` exceeds ``max_bytes``, more bytes arrive than
            declared, or :meth:`finish` finds fewer.
    """

    def __init__(self, expected: int, max_bytes: int) -> None:
        if expected > max_bytes:
            raise TransportError(f"body of {expected} bytes exceeds the limit of {max_bytes}")
        self._buffer = bytearray(expected)
        self._view = memoryview(self._buffer)
        self._filled = 0

    def add(self, chunk: bytes) -> None:
        """Append one chunk."""
        end = self._filled + len(chunk)
        if end > len(self._buffer):
            raise TransportError(f"body is longer than the {len(self._buffer)} bytes declared")
        self._view[self._filled : end] = chunk
        self._filled = end

    def finish(self) -> bytearray:
        """The whole body (a writable buffer the wire codec decodes in place)."""
        if self._filled != len(self._buffer):
            raise TransportError(
                f"body ended after {self._filled} of the {len(self._buffer)} bytes declared"
            )
        self._view.release()
        return self._buffer


def reply_digest(
    metadata: bytes, *, is_error: bool, error_code: int, error_reason: str, content_sha256: bytes
) -> bytes:
    """The bytes a node signs for a reply: everything that makes it that reply.

    Layout: ``b"GHR1"`` | SHA-256(metadata) | is_error | error code (int64) |
    SHA-256(error reason, UTF-8) | SHA-256(content frame; of b"" for an error).
    """
    return _REPLY_DIGEST.pack(
        b"GHR1",
        hashlib.sha256(metadata).digest(),
        is_error,
        error_code,
        hashlib.sha256(error_reason.encode("utf-8")).digest(),
        content_sha256,
    )
