"""The ClientApp each bank runs: DP-SGD on its own transactions, validation on its own data.

The run's DP plan (``dp-mode = "dp-sgd"``, ``dp-target-epsilon``, ``dp-delta``, see
:func:`bank.task.dp_sgd_plan`) is the bank's record-level budget for the run, the
figure its SuperNode books in the bank's ledger: the noise is calibrated so that the
plan's rounds (``dp-rounds``, by default ``num-server-rounds``) spend at most
``dp-target-epsilon``, and the bank refuses a training round beyond them rather than
overspend. With ``dp-mode = ""`` the bank trains without DP (for comparison).
"""

from __future__ import annotations

import math

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict
from bank import task

app = ClientApp()

#: Where this bank keeps its training rounds so far and its latest spend (per run).
STATE_KEY = "bank.privacy"


class BudgetSpent(RuntimeError):
    """Another training round would exceed the run's record-level target epsilon."""


def _local_data(ctx: Context) -> tuple[task.Split, task.Split]:
    cfg = ctx.run_config
    return task.load_bank_data(
        int(ctx.node_config["partition-id"]),
        int(ctx.node_config["num-partitions"]),
        seed=int(cfg["data-seed"]),
        validation_fraction=float(cfg["validation-fraction"]),
    )


def _arrays(msg: Message) -> dict[str, task.Array]:
    record: ArrayRecord = msg.content["arrays"]
    return dict(record.items())


def _privacy_state(ctx: Context) -> MetricRecord:
    state = ctx.state.get(STATE_KEY)
    return state if isinstance(state, MetricRecord) else MetricRecord({"rounds-trained": 0})


@app.train()
def train(msg: Message, ctx: Context) -> Message:
    cfg = ctx.run_config
    train_set, _ = _local_data(ctx)
    params = _arrays(msg)
    epochs, batch_size = int(cfg["local-epochs"]), int(cfg["batch-size"])
    learning_rate, pos_weight = float(cfg["learning-rate"]), float(cfg["pos-weight"])
    plan = task.dp_sgd_plan(cfg)
    if plan is None:
        new_params = task.train_plain(
            params,
            train_set,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            pos_weight=pos_weight,
            seed=int(msg.content["config"]["server-round"]),
        )
        metrics = MetricRecord({"num-examples": len(train_set)})
    else:
        privacy = _privacy_state(ctx)
        done = int(privacy["rounds-trained"])
        if done >= plan.rounds:
            raise BudgetSpent(
                f"this bank's record-level budget for the run is spent: it trained the "
                f"{plan.rounds} rounds the noise was calibrated for"
            )
        new_params, metrics = task.train_private(
            params,
            train_set,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            pos_weight=pos_weight,
            max_grad_norm=float(cfg["max-grad-norm"]),
            target_epsilon=plan.target_epsilon,
            delta=plan.delta,
            rounds=plan.rounds,
            context=ctx,
            accountant=plan.accountant,
            # Calibrated for the whole plan in the first round, reused afterwards.
            noise_multiplier=privacy.get("noise-multiplier"),
        )
        ctx.state[STATE_KEY] = MetricRecord(
            {
                "rounds-trained": done + 1,
                "noise-multiplier": metrics["dp-sgd-noise-multiplier"],
                "dp-epsilon-record": metrics["dp-epsilon-record"],
                "dp-delta-record": metrics["dp-delta-record"],
            }
        )
    return Message(
        RecordDict({"arrays": ArrayRecord(new_params), "metrics": metrics}), reply_to=msg
    )


@app.evaluate()
def evaluate(msg: Message, ctx: Context) -> Message:
    """Validation AUPRC, recall at the fixed false-positive rate, loss; the spend so far.

    The spend is repeated here because evaluation replies reach the server one by
    one even when training replies are securely aggregated (SecAgg+ sums metrics).
    """
    _, validation = _local_data(ctx)
    cfg = ctx.run_config
    scores = task.evaluate(
        _arrays(msg), validation, fpr=float(cfg["fixed-fpr"]), pos_weight=float(cfg["pos-weight"])
    )
    # Validation data without fraud have no AUPRC or recall (NaN): leave them out.
    metrics = MetricRecord({k: v for k, v in scores.items() if math.isfinite(v)})
    metrics["num-examples"] = len(validation)
    privacy = _privacy_state(ctx)
    for key in ("dp-epsilon-record", "dp-delta-record"):
        if key in privacy:
            metrics[key] = privacy[key]
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
