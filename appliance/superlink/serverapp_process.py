"""Entry point of the per-run ServerApp subprocess the SuperLink starts.

``python -m appliance.superlink.serverapp_process APP_DIR``, with the AppIo address,
the run's secret token, the reply size limit and the inherited body socket in the
environment (never on the command line, where other local users could read them).
It loads the ServerApp from the extracted bundle, runs it against an
:class:`AppIoGrid`, and reports the outcome with ``Finish``; its stdout and stderr
become the run's log.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import grpc

from appliance.allocator import keep_freed_buffers
from appliance.appconfig import load_app_spec, load_component
from appliance.context import Context
from appliance.message import SERVER_NODE_ID
from appliance.proto import appio_pb2 as pb
from appliance.proto.appio_pb2_grpc import AppIoStub
from appliance.serverapp import ServerApp
from appliance.superlink.appio_grid import TOKEN_HEADER, AppIoGrid
from appliance.superlink.body_fds import ENV_BODY_SOCKET, BodyReceiver

ENV_ADDRESS = "GREENHOUSE_APPIO_ADDRESS"
ENV_TOKEN = "GREENHOUSE_RUN_TOKEN"  # noqa: S105 -- a variable name, not a secret
ENV_MAX_REPLY_BYTES = "GREENHOUSE_MAX_MESSAGE_BYTES"


def _finish(channel: grpc.Channel, token: str, *, failed: bool, reason: str) -> None:
    AppIoStub(channel).Finish(
        pb.FinishRequest(failed=failed, reason=reason[:4000]), metadata=((TOKEN_HEADER, token),)
    )


def main(argv: list[str]) -> int:
    """Run the ServerApp in ``argv[0]``; return the exit code."""
    keep_freed_buffers()
    app_dir = argv[0]
    address = os.environ[ENV_ADDRESS]
    token = os.environ.pop(ENV_TOKEN)
    max_bytes = int(os.environ.get(ENV_MAX_REPLY_BYTES, str(2**31)))
    body_socket = os.environ.pop(ENV_BODY_SOCKET, "")
    bodies = BodyReceiver.from_fd(int(body_socket)) if body_socket.isdigit() else None
    options = [("grpc.max_receive_message_length", 8 * 2**20)]
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            grid = AppIoGrid(channel, token, max_reply_bytes=max_bytes, bodies=bodies)
            spec = load_app_spec(app_dir)
            server_app = load_component(spec, spec.serverapp, ServerApp)
            context = Context(
                run_id=grid.run_id,
                node_id=SERVER_NODE_ID,
                run_config=json.loads(grid.run_config_json),
            )
            server_app(grid, context)
        except Exception as exc:
            traceback.print_exc()
            sys.stderr.flush()
            _finish(channel, token, failed=True, reason=f"{type(exc).__name__}: {exc}")
            return 1
        _finish(channel, token, failed=False, reason="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
