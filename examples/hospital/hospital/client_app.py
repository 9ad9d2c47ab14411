"""The ClientApp each hospital runs: local training and validation on its own records."""

from __future__ import annotations

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict
from dp import clip_update
from dp.keys import CLIPPING_NORM, UNIT_WEIGHT
from hospital import task

app = ClientApp()


def _local_data(ctx: Context) -> tuple[task.Split, task.Split]:
    cfg = ctx.run_config
    return task.load_hospital_data(
        int(ctx.node_config["partition-id"]),
        int(ctx.node_config["num-partitions"]),
        alpha=float(cfg["dirichlet-alpha"]),
        seed=int(cfg["data-seed"]),
        test_fraction=float(cfg["test-fraction"]),
    )


@app.train()
def train(msg: Message, ctx: Context) -> Message:
    train_set, _ = _local_data(ctx)
    params = msg.content["arrays"].to_numpy_ndarrays()
    config = msg.content["config"]
    new_params, loss = task.train(
        params,
        train_set,
        epochs=int(ctx.run_config["local-epochs"]),
        learning_rate=float(config["learning-rate"]),
        batch_size=int(ctx.run_config["batch-size"]),
        seed=int(config["server-round"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # set by FedProx
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(train_set.y)})
    arrays = ArrayRecord(new_params)
    if CLIPPING_NORM in config:  # central DP: the update leaves clipped to the server's norm
        arrays = clip_update(arrays, msg.content["arrays"], float(config[CLIPPING_NORM])).arrays
        metrics[UNIT_WEIGHT] = 1  # under SecAgg+ every hospital then weighs the same
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, ctx: Context) -> Message:
    _, validation = _local_data(ctx)
    loss, accuracy = task.evaluate(msg.content["arrays"].to_numpy_ndarrays(), validation)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(validation.y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
