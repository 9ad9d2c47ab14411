"""The ClientApp subprocess: one per run, kept alive for the whole run.

The SuperNode starts ``python -m appliance.supernode.clientapp_entry APP_DIR`` (which
applies the site's limits, then calls :func:`main`) with one end of a Unix socket
pair (its number in the environment): it sends message frames on it and reads reply
frames back (:mod:`appliance.supernode.frames`), so the app's own ``print`` output
on stdout/stderr can never corrupt the protocol. Keeping the process for the run
means the interpreter and the app's imports are paid once, and ``Context.state``
persists across the run's messages.
"""

from __future__ import annotations

import json
import os
import socket

from appliance.appconfig import load_app_spec, load_component
from appliance.clientapp import ClientApp, ErrorDetail
from appliance.context import Context
from appliance.errors import ApplianceError
from appliance.message import Error, ErrorCode, Message
from appliance.supernode.frames import FrameError, receive_frame, send_frame
from appliance.wire import decode_message, encode_message_parts

__all__ = ["ENV_CONTEXT", "ENV_SOCKET_FD", "main", "serve"]

ENV_SOCKET_FD = "GREENHOUSE_FRAME_FD"
ENV_CONTEXT = "GREENHOUSE_CLIENT_CONTEXT"


def _load(app_dir: str) -> tuple[ClientApp | None, str]:
    try:
        spec = load_app_spec(app_dir)
        return load_component(spec, spec.clientapp, ClientApp), ""
    except ApplianceError as exc:
        return None, str(exc)


def serve(
    app_dir: str,
    channel: socket.socket,
    context: Context,
    *,
    error_detail: ErrorDetail,
    max_bytes: int,
    refused: str = "",
) -> None:
    """Answer the messages that arrive on ``channel`` until the SuperNode closes it
    (or breaks the frame protocol).

    A non-empty ``refused`` (why the process could not be confined) means the app
    is never loaded: every message gets an error reply with that reason.
    """
    app, load_error = (None, refused) if refused else _load(app_dir)
    while True:
        try:
            frame = receive_frame(channel, max_bytes)
        except FrameError:
            return
        message = decode_message(frame)
        del frame  # the message's arrays keep what they use of it
        if app is None:
            reply = Message(Error(ErrorCode.LOAD_CLIENT_APP_FAILED, load_error), reply_to=message)
        else:
            reply = app(message, context, error_detail=error_detail)
        del message
        send_frame(channel, encode_message_parts(reply))


def main(argv: list[str], *, refused: str = "") -> int:
    """Serve ``APP_DIR`` (``argv[0]``); pipes and context come from the environment."""
    settings = json.loads(os.environ.pop(ENV_CONTEXT))
    context = Context(
        run_id=int(settings["run_id"]),
        node_id=int(settings["node_id"]),
        node_config=dict(settings["node_config"]),
        run_config=dict(settings["run_config"]),
    )
    fd = int(os.environ.pop(ENV_SOCKET_FD))
    os.set_inheritable(fd, False)  # not for processes the app may start
    with socket.socket(fileno=fd) as channel:
        serve(
            argv[0],
            channel,
            context,
            error_detail=ErrorDetail(settings.get("error_detail", "message")),
            max_bytes=int(settings["max_message_bytes"]),
            refused=refused,
        )
    return 0
