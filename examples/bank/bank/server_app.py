"""The ServerApp: FedAvg over the banks, evaluated on a market-wide test sample.

Prints one table row per round as the round completes, then the final AUPRC and
recall at the fixed false-positive rate next to the baselines (the same federation
without DP, bank 0 alone without DP, and a random score, whose AUPRC is the fraud
rate), and the record-level privacy spend the banks reported.

The two trained baselines are computed here, from the same seeded generator the
banks use; that is possible only because the data are synthetic. In real life they
would come from separate runs (``dp-mode=""``, and one bank alone).
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance import ArrayRecord, Context, Grid, MetricRecord, RecordDict, ServerApp
from appliance.strategy import FedAvg, weighted_metrics_mean
from bank import task
from dp.spend import PrivacySpend, PrivacyUnit

app = ServerApp()

UNIT_NOTE = "record-level: protects one customer's transaction record within one bank"


class RoundReport:
    """Collects each round's federated metrics and the banks' privacy spend.

    Each bank reports its own cumulative record-level (ε, δ); the banks' guarantees
    are about different people, so they are not added up: the federation's figure
    is the largest of them.
    """

    def __init__(self, fpr: float) -> None:
        self.fpr = fpr
        self.site_auprc: float | None = None
        self.site_spends: list[PrivacySpend] = []

    def _collect(self, replies: Sequence[RecordDict]) -> None:
        spends = []
        for content in replies:
            for metrics in content.metric_records.values():
                spend = PrivacySpend.from_metrics(metrics, PrivacyUnit.RECORD)
                if spend is not None:
                    spends.append(spend)
        if spends:
            self.site_spends = spends

    def _aggregate(self, replies: Sequence[RecordDict], weight_key: str) -> MetricRecord:
        self._collect(replies)
        metrics = weighted_metrics_mean(replies, weight_key)
        for key in PrivacySpend(epsilon=0, delta=0, unit=PrivacyUnit.RECORD).to_metrics():
            metrics.pop(key, None)  # a mean of the banks' epsilons means nothing
        if self.site_spends:
            metrics.update(self.max_spend().to_metrics())
        return metrics

    def train_metrics(self, replies: Sequence[RecordDict], weight_key: str) -> MetricRecord:
        return self._aggregate(replies, weight_key)

    def evaluate_metrics(self, replies: Sequence[RecordDict], weight_key: str) -> MetricRecord:
        metrics = self._aggregate(replies, weight_key)
        self.site_auprc = float(metrics["auprc"]) if "auprc" in metrics else None
        return metrics

    def max_spend(self) -> PrivacySpend:
        """The largest ε any bank reported (with the δ of that bank)."""
        return max(self.site_spends, key=lambda spend: spend.epsilon)

    def header(self) -> None:
        recall = f"recall@{self.fpr:.0%}FPR"
        print(
            f"{'round':>5}  {'site val AUPRC':>14}  {'test loss':>9}  {'test AUPRC':>10}  "
            f"{recall:>13}  {'max ε (record)':>14}",
            flush=True,
        )

    def row(self, server_round: int, scores: dict[str, float]) -> None:
        site = "-" if self.site_auprc is None else f"{self.site_auprc:.4f}"
        eps = f"{self.max_spend().epsilon:.3f}" if self.site_spends else "-"
        print(
            f"{server_round:>5}  {site:>14}  {scores['loss']:>9.4f}  {scores['auprc']:>10.4f}  "
            f"{scores['recall-at-fpr']:>13.4f}  {eps:>14}",
            flush=True,
        )


def _result_line(label: str, auprc: float, recall: float) -> None:
    print(f"  {label:<44} AUPRC {auprc:.4f}   recall {recall:.4f}", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    seed, fpr = int(cfg["data-seed"]), float(cfg["fixed-fpr"])
    pos_weight, hidden = float(cfg["pos-weight"]), int(cfg["hidden-units"])
    test_set = task.load_test_set(seed, int(cfg["test-size"]))
    report = RoundReport(fpr)

    def evaluate_on_test_set(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        scores = task.evaluate(dict(arrays.items()), test_set, fpr=fpr, pos_weight=pos_weight)
        report.row(server_round, scores)
        return MetricRecord(scores)

    min_nodes = int(cfg["min-nodes"])
    strategy = FedAvg(
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
        train_metrics_aggr_fn=report.train_metrics,
        evaluate_metrics_aggr_fn=report.evaluate_metrics,
    )
    secure = None
    if cfg.get("secure-aggregation"):
        from secagg import SecAggPlus

        secure = SecAggPlus(
            clip_range=float(cfg["secagg-clip-range"]),
            max_weight=int(cfg["secagg-max-weight"]),
        )
        print("SecAgg+ on: the server sees only the sum of the banks' updates")
    plan = task.dp_sgd_plan(cfg)
    if plan is not None:
        print(
            f"DP-SGD at every bank: target ε = {plan.target_epsilon:g} at δ = {plan.delta:g} "
            f"over {plan.rounds} rounds ({UNIT_NOTE}), clipping norm "
            f"{float(cfg['max-grad-norm']):g}"
        )
    else:
        print("DP-SGD off (dp-mode = ''): the banks train without differential privacy")
    report.header()
    rounds, epochs = int(cfg["num-server-rounds"]), int(cfg["local-epochs"])
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.initial_parameters(seed, hidden)),
        num_rounds=rounds,
        evaluate_fn=evaluate_on_test_set,
        secure_aggregation=secure,
    )
    final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    final["prevalence"] = test_set.fraud_rate
    print(
        f"market-wide test set: {len(test_set)} transactions, {test_set.fraud_rate:.2%} fraud; "
        f"recall at a false-positive rate of {fpr:.2%}"
    )
    this_run = "federated, DP-SGD (this run)" if plan is not None else "federated, no DP (this run)"
    _result_line(this_run, final["auprc"], final["recall-at-fpr"])
    if cfg.get("report-baselines"):
        banks = len(grid.get_node_ids())
        single = int(cfg["baseline-bank"])

        def plain(bank_ids: list[int]) -> dict[str, task.Array]:
            return task.fedavg_plain(
                bank_ids,
                rounds=rounds,
                epochs=epochs,
                batch_size=int(cfg["batch-size"]),
                learning_rate=float(cfg["learning-rate"]),
                pos_weight=pos_weight,
                seed=seed,
                validation_fraction=float(cfg["validation-fraction"]),
                hidden=hidden,
            )

        baselines = {"no-dp": plain(list(range(banks))), "single-bank": plain([single])}
        labels = {
            "no-dp": f"baseline: federated, {banks} banks, no DP",
            "single-bank": f"baseline: bank {single} alone, no DP",
        }
        for name, params in baselines.items():
            scores = task.evaluate(params, test_set, fpr=fpr, pos_weight=pos_weight)
            _result_line(labels[name], scores["auprc"], scores["recall-at-fpr"])
            final[f"{name}-auprc"] = scores["auprc"]
            final[f"{name}-recall-at-fpr"] = scores["recall-at-fpr"]
    _result_line("baseline: random score (AUPRC = fraud rate)", test_set.fraud_rate, fpr)
    if plan is not None:
        if not report.site_spends:
            print("privacy: no bank reported a record-level spend")
        else:
            spend = report.max_spend()
            each = ", ".join(f"{s.epsilon:.3f}" for s in report.site_spends)
            print(
                f"privacy spent (DP-SGD, {UNIT_NOTE}): ε = {spend.epsilon:.3f} at "
                f"δ = {spend.delta:g}, the largest of the banks' ({each})"
            )
            context.state["privacy"] = MetricRecord(
                {
                    **spend.to_metrics(),
                    "site-epsilons": [s.epsilon for s in report.site_spends],
                }
            )
    context.state["result"] = final
