"""The ServerApp: FedAvg over the hospitals, evaluated on the public test set."""

from __future__ import annotations

from appliance import ArrayRecord, ConfigRecord, Context, Grid, MetricRecord, ServerApp
from appliance.strategy import FedAvg
from hospital import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    seed, test_fraction = int(cfg["data-seed"]), float(cfg["test-fraction"])
    test_set = task.load_test_set(seed, test_fraction)

    def evaluate_on_test_set(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = task.evaluate(arrays.to_numpy_ndarrays(), test_set)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    min_nodes = int(cfg["min-nodes"])
    strategy = FedAvg(
        min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.initial_parameters()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord({"learning-rate": float(cfg["learning-rate"])}),
        evaluate_fn=evaluate_on_test_set,
    )

    print(
        f"{'round':>5}  {'train loss':>10}  {'site val acc':>12}  {'test loss':>9}  {'test acc':>8}"
    )
    for rnd, central in sorted(result.evaluate_metrics_serverapp.items()):
        trained = result.train_metrics_clientapp.get(rnd, {})
        federated = result.evaluate_metrics_clientapp.get(rnd, {})
        train_loss = f"{trained['train-loss']:.4f}" if "train-loss" in trained else "-"
        site_acc = f"{federated['accuracy']:.4f}" if "accuracy" in federated else "-"
        print(
            f"{rnd:>5}  {train_loss:>10}  {site_acc:>12}  "
            f"{central['loss']:>9.4f}  {central['accuracy']:>8.4f}"
        )
    final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    print(f"federated model: test accuracy {final['accuracy']:.4f}")
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
