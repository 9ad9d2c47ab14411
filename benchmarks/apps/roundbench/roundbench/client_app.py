"""Train handler that does no training: the received arrays plus a constant.

``num-examples`` is the node's partition id + 1, so every node's reply is a different
byte string (the SuperLink's blob store deduplicates identical ones, which real
updates never are) and FedAvg's weighting is exercised.
"""

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, ctx: Context) -> Message:
    step = float(ctx.run_config["step"])
    received = msg.content["arrays"]
    updated = ArrayRecord(
        {name: array + array.dtype.type(step) for name, array in received.items()}
    )
    examples = int(ctx.node_config.get("partition-id", 0)) + 1
    metrics = MetricRecord({"num-examples": examples})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
