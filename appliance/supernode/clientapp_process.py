"""The ClientApp subprocess: one per run, kept alive for the whole run.

The SuperNode starts ``python -m appliance.supernode.clientapp_entry APP_DIR`` (which
applies the site's limits, then calls :func:`main`) with two extra pipe file
descriptors (numbers in the environment): it writes length-prefixed message frames
to one and reads reply frames from the other, so the app's own ``print`` output on
stdout/stderr can never corrupt the protocol. Keeping the process for the run means
the interpreter and the app's imports are paid once, and ``Context.state`` persists
across the run's messages.

Frames use :mod:`appliance.wire`; a frame is preceded by its length as an 8-byte
big-endian integer.
"""

from __future__ import annotations

import json
import os
import struct
from typing import BinaryIO

from appliance.appconfig import load_app_spec, load_component
from appliance.clientapp import ClientApp, ErrorDetail
from appliance.context import Context
from appliance.errors import ApplianceError
from appliance.message import Error, ErrorCode, Message
from appliance.wire import decode_message, encode_message

__all__ = ["ENV_IN_FD", "ENV_OUT_FD", "FRAME_LENGTH", "read_frame", "serve", "write_frame"]

ENV_IN_FD = "GREENHOUSE_IN_FD"
ENV_OUT_FD = "GREENHOUSE_OUT_FD"
ENV_CONTEXT = "GREENHOUSE_CLIENT_CONTEXT"
#: Each frame on the pipes is preceded by its length, an 8-byte big-endian integer.
FRAME_LENGTH = struct.Struct(">Q")


class PipeClosed(ApplianceError):
    """The other end of the frame pipe went away."""


def write_frame(stream: BinaryIO, frame: bytes) -> None:
    """Write one length-prefixed frame and flush."""
    stream.write(FRAME_LENGTH.pack(len(frame)))
    stream.write(frame)
    stream.flush()


def _read_exactly(stream: BinaryIO, count: int) -> bytearray:
    buffer = bytearray(count)
    view = memoryview(buffer)
    filled = 0
    while filled < count:
        read = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not read:
            raise PipeClosed(f"pipe closed after {filled} of {count} bytes")
        filled += read
    return buffer


def read_frame(stream: BinaryIO, max_bytes: int) -> bytearray:
    """Read one length-prefixed frame (at most ``max_bytes``)."""
    (length,) = FRAME_LENGTH.unpack(_read_exactly(stream, FRAME_LENGTH.size))
    if length > max_bytes:
        raise PipeClosed(f"peer announced a {length}-byte frame, more than {max_bytes}")
    return _read_exactly(stream, length)


def _load(app_dir: str) -> tuple[ClientApp | None, str]:
    try:
        spec = load_app_spec(app_dir)
        return load_component(spec, spec.clientapp, ClientApp), ""
    except ApplianceError as exc:
        return None, str(exc)


def serve(
    app_dir: str,
    inbox: BinaryIO,
    outbox: BinaryIO,
    context: Context,
    *,
    error_detail: ErrorDetail,
    max_bytes: int,
    refused: str = "",
) -> None:
    """Answer messages from ``inbox`` on ``outbox`` until the SuperNode closes the pipe.

    A non-empty ``refused`` (why the process could not be confined) means the app
    is never loaded: every message gets an error reply with that reason.
    """
    app, load_error = (None, refused) if refused else _load(app_dir)
    while True:
        try:
            frame = read_frame(inbox, max_bytes)
        except PipeClosed:
            return
        message = decode_message(frame)
        if app is None:
            reply = Message(Error(ErrorCode.LOAD_CLIENT_APP_FAILED, load_error), reply_to=message)
        else:
            reply = app(message, context, error_detail=error_detail)
        write_frame(outbox, encode_message(reply))


def main(argv: list[str], *, refused: str = "") -> int:
    """Serve ``APP_DIR`` (``argv[0]``); pipes and context come from the environment."""
    settings = json.loads(os.environ.pop(ENV_CONTEXT))
    context = Context(
        run_id=int(settings["run_id"]),
        node_id=int(settings["node_id"]),
        node_config=dict(settings["node_config"]),
        run_config=dict(settings["run_config"]),
    )
    with (
        os.fdopen(int(os.environ.pop(ENV_IN_FD)), "rb", buffering=0) as inbox,
        os.fdopen(int(os.environ.pop(ENV_OUT_FD)), "wb") as outbox,
    ):
        serve(
            argv[0],
            inbox,  # type: ignore[arg-type]
            outbox,
            context,
            error_detail=ErrorDetail(settings.get("error_detail", "message")),
            max_bytes=int(settings["max_message_bytes"]),
            refused=refused,
        )
    return 0
