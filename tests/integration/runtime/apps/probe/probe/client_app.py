"""Adds (partition id + 1) to every weight after an optional sleep."""

import socket
import time

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


def _must_not_reach(address: str) -> None:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return
    raise RuntimeError(f"the network is reachable: connected to {address}")


def _must_not_read(paths: str) -> None:
    for path in paths.split(","):
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError:
            continue
        if data:
            raise RuntimeError(f"a node secret is readable: {len(data)} bytes of {path}")


@app.train()
def train(msg: Message, ctx: Context) -> Message:
    time.sleep(float(ctx.run_config["train-sleep"]))
    hog = ctx.run_config.get("hog", "")
    if hog == "memory":
        _ = bytearray(8 * 2**30)  # far past the site's memory limit
    elif hog == "network":
        _must_not_reach(str(ctx.run_config["reach"]))
    elif hog == "secrets":
        _must_not_read(str(ctx.run_config["reach"]))
    elif hog == "loop" and ctx.node_config.get("partition-id") == 0:
        while True:
            pass
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    step = float(ctx.node_config.get("partition-id", 0)) + 1.0
    updated = [a + step for a in arrays]
    metrics = MetricRecord({"num-examples": 10, "step": step})
    return Message(RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics}), reply_to=msg)
