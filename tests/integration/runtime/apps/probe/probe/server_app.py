"""FedAvg over the probe ClientApp; prints each round's model sum and failures."""

import time

import numpy as np

from appliance import ArrayRecord, Context, Grid, ServerApp
from appliance.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if cfg["server-raise"]:
        raise RuntimeError(str(cfg["server-raise"]))
    min_nodes = int(cfg["min-nodes"])
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=min_nodes,
        min_available_nodes=min_nodes,
        wait_for_nodes_s=30.0,
    )
    secure = None
    if cfg["dp-mode"] == "distributed":
        from appliance.distributed_dp import distributed_secagg

        secure = distributed_secagg(cfg, dimension=int(cfg["size"]), sites=min_nodes)
    elif cfg["secagg"]:
        from secagg import SecAggPlus

        def stage_closed(stage: str, replies: int) -> None:
            print(f"secagg stage {stage} closed with {replies} replies", flush=True)
            if stage == cfg["pause-after-stage"]:
                time.sleep(float(cfg["pause-s"]))

        secure = SecAggPlus(clip_range=10.0, on_stage_closed=stage_closed)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(int(cfg["size"]), dtype=np.float32)]),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
        secure_aggregation=secure,
    )
    for rnd, failures in sorted(result.train_failures.items()):
        for failure in failures:
            print(f"round {rnd} failure: {failure.reason}", flush=True)
    print(f"final sum {float(result.arrays['0'].sum()):.4f}", flush=True)
