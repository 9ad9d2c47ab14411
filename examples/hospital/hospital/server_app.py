"""The ServerApp: FedAvg over the hospitals, evaluated on the public test set.

Prints one table row per round as the round completes (live progress), then the
final accuracy next to a centrally trained baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance import ArrayRecord, ConfigRecord, Context, Grid, MetricRecord, RecordDict, ServerApp
from appliance.strategy import FedAvg, weighted_metrics_mean
from hospital import task

app = ServerApp()


class RoundPrinter:
    """Collects each round's federated metrics and prints the row when the round ends."""

    def __init__(self) -> None:
        self.train_loss: float | None = None
        self.site_accuracy: float | None = None

    def train_metrics(self, replies: Sequence[RecordDict], weight_key: str) -> MetricRecord:
        metrics = weighted_metrics_mean(replies, weight_key)
        self.train_loss = float(metrics["train-loss"])
        return metrics

    def evaluate_metrics(self, replies: Sequence[RecordDict], weight_key: str) -> MetricRecord:
        metrics = weighted_metrics_mean(replies, weight_key)
        self.site_accuracy = float(metrics["accuracy"])
        return metrics

    def row(self, server_round: int, loss: float, accuracy: float) -> None:
        train = "-" if self.train_loss is None else f"{self.train_loss:.4f}"
        site = "-" if self.site_accuracy is None else f"{self.site_accuracy:.4f}"
        print(
            f"{server_round:>5}  {train:>10}  {site:>12}  {loss:>9.4f}  {accuracy:>8.4f}",
            flush=True,
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    seed, test_fraction = int(cfg["data-seed"]), float(cfg["test-fraction"])
    test_set = task.load_test_set(seed, test_fraction)
    printer = RoundPrinter()

    def evaluate_on_test_set(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = task.evaluate(arrays.to_numpy_ndarrays(), test_set)
        printer.row(server_round, loss, accuracy)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    min_nodes = int(cfg["min-nodes"])
    strategy = FedAvg(
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
        train_metrics_aggr_fn=printer.train_metrics,
        evaluate_metrics_aggr_fn=printer.evaluate_metrics,
    )
    if cfg.get("dp-mode") == "central":
        from dp import DPFedAvgClientSideFixed

        strategy = DPFedAvgClientSideFixed(
            strategy,
            noise_multiplier=float(cfg["dp-noise-multiplier"]),
            clipping_norm=float(cfg["dp-clipping-norm"]),
        )
        print(
            f"central DP on: updates clipped to {cfg['dp-clipping-norm']}, "
            f"noise multiplier {cfg['dp-noise-multiplier']}"
        )
    secure = None
    if cfg.get("dp-mode") == "distributed":
        from appliance.distributed_dp import distributed_secagg

        model = task.initial_parameters()
        secure = distributed_secagg(
            cfg, dimension=sum(a.size for a in model), sites=len(grid.get_node_ids())
        )
        print(
            f"distributed DP on: each hospital clips to {cfg['dp-clipping-norm']} and adds "
            f"its Skellam noise share (noise multiplier {cfg['dp-noise-multiplier']}) under "
            "SecAgg+"
        )
    elif cfg.get("secure-aggregation"):
        from secagg import SecAggPlus

        secure = SecAggPlus(clip_range=float(cfg["secagg-clip-range"]))
        print("SecAgg+ on: the server sees only the sum of the hospitals' updates")
    print(
        f"{'round':>5}  {'train loss':>10}  {'site val acc':>12}  {'test loss':>9}  {'test acc':>8}"
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.initial_parameters()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord({"learning-rate": float(cfg["learning-rate"])}),
        evaluate_fn=evaluate_on_test_set,
        secure_aggregation=secure,
    )
    final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    print(f"federated model: test accuracy {final['accuracy']:.4f}")
    spent = getattr(strategy, "spent", None)
    if cfg.get("dp-mode") == "distributed":
        from dp.plan import DPPlan

        spent = DPPlan.from_run_config(cfg).spend()  # type: ignore[union-attr]
    if spent is not None:
        print(f"privacy spent: {spent} (one hospital's whole contribution is protected)")
    if cfg.get("report-central-baseline"):
        baseline = task.central_baseline(
            epochs=int(cfg["local-epochs"]) * int(cfg["num-server-rounds"]),
            learning_rate=float(cfg["learning-rate"]),
            batch_size=int(cfg["batch-size"]),
            seed=seed,
            test_fraction=test_fraction,
        )
        print(f"central baseline (pooled data, for comparison only): test accuracy {baseline:.4f}")
    context.state["result"] = final
