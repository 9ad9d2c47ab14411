"""DP figures: clipping + noise overhead per update, accountant speed, accuracy vs epsilon.

Usage::

    python benchmarks/dp.py                   # all three, 1M-value updates
    python benchmarks/dp.py --values 100000   # smaller updates
    python benchmarks/dp.py --skip-accuracy   # overhead and accountant only

Overhead: one site's update of ``--values`` float32 values next to a global model
of the same size, timed in this run against a plain copy of the array (what any
mod that rewrites the reply pays anyway): clipping alone (``clip_update``, what
:class:`dp.ClientSideClippingMod` does), clipping + local-DP Gaussian noise (what
:class:`dp.LocalDPMod` does, noise from a fresh OS-seeded generator), the server's
DP aggregation of one update (clip into the running sum, then noise), and the
distributed-DP site step (quantize + Skellam share). Medians of ``--repeats`` runs.

Accountant: wall time of :func:`dp.epsilon` (RDP and PLD) and of a run's
per-round re-accounting.

Accuracy: the hospital example's logistic regression (3 sites, 10 rounds, C = 0.5)
through the local runner, DP-FedAvg at several noise multipliers, mean test
accuracy over seeds, next to FedAvg without DP; site-level epsilon at δ = 1e-5
with the PLD accountant.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Named like the package it measures: drop this folder from sys.path, use the repo root.
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
import structlog  # noqa: E402

import dp  # noqa: E402
from appliance import ArrayRecord, ClientApp, ConfigRecord, MetricRecord, ServerApp  # noqa: E402
from appliance.local import run_local  # noqa: E402
from appliance.strategy import FedAvg  # noqa: E402
from dp.mechanisms import ClippedSum, local_dp_release  # noqa: E402


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_overhead(values: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    reference = ArrayRecord({"w": rng.normal(size=values).astype(np.float32)})
    update = ArrayRecord({"w": reference["w"] + rng.normal(size=values).astype(np.float32)})
    norm = 1.0

    def local_dp() -> None:
        clipped = dp.clip_update(update, reference, norm)
        deltas = dp.model_delta(clipped.arrays, reference)
        local_dp_release(deltas, clipping_norm=norm, epsilon=1.0, delta=1e-5, rng=dp.secure_rng())
        ArrayRecord({"w": (reference["w"] + deltas[0]).astype(np.float32)})

    def server_aggregate() -> None:
        total = ClippedSum([(values,)], norm)
        total.add(dp.model_delta(update, reference))
        total.noised_mean(1.0, dp.secure_rng())

    plan = dp.SkellamPlan(
        clipping_norm=norm,
        scale=4 * np.sqrt(values),
        dimension=values,
        noise_multiplier=1.0,
        expected_sites=10,
        min_surviving_sites=7,
    )
    deltas = dp.model_delta(update, reference)

    def distributed() -> None:
        quantized = dp.quantize(deltas, plan, dp.secure_rng())
        dp.add_noise_share(quantized, plan, dp.secure_rng())

    rows = [
        ("plain copy of the array (baseline)", lambda: reference["w"].copy()),
        ("client-side clipping (clip_update)", lambda: dp.clip_update(update, reference, norm)),
        ("clipping + local-DP Gaussian noise", local_dp),
        ("server: clip into sum + noise (1 site)", server_aggregate),
        ("distributed: quantize + Skellam share", distributed),
    ]
    print(f"\nPer-update cost, {values:,} float32 values (median of {repeats}):")
    baseline = None
    for name, fn in rows:
        ms = _median_ms(fn, repeats)
        baseline = baseline or ms
        print(f"  {name:<42} {ms:8.1f} ms   {ms / baseline:6.1f}x copy")
    print(f"  (Skellam plan: {dp.required_modulus_bits(plan)} modulus bits for 10 sites)")


def bench_accountant() -> None:
    print("\nAccountant speed:")
    cases = [(1.0, 0.1, 100), (0.8, 1.0, 50), (1.0, 0.01, 1000)]
    for kind in ("rdp", "pld"):
        for z, q, t in cases:
            start = time.perf_counter()
            eps = dp.epsilon(
                noise_multiplier=z, sampling_rate=q, rounds=t, delta=1e-5, accountant=kind
            )
            ms = (time.perf_counter() - start) * 1e3
            print(f"  {kind}  z={z:<4} q={q:<5} T={t:<5} ε = {eps:7.3f}   {ms:8.1f} ms")
    run = dp.RunAccountant(delta=1e-5, unit=dp.PrivacyUnit.SITE)
    start = time.perf_counter()
    for _ in range(100):
        run.add_rounds(noise_multiplier=1.0, sampling_rate=0.1)
        run.spend()
    per_round = (time.perf_counter() - start) * 1e3 / 100
    print(f"  per-round re-accounting (RDP, 100 rounds): {per_round:.1f} ms per round")
    start = time.perf_counter()
    z = dp.noise_multiplier_for(epsilon=8.0, delta=1e-5, sampling_rate=0.1, rounds=100)
    seconds = time.perf_counter() - start
    print(f"  calibrate z for ε = 8 (q=0.1, T=100): z = {z:.3f} in {seconds:.2f} s")


def _hospital_accuracy(noise_multiplier: float | None, seed: int, rounds: int, sites: int) -> float:
    from hospital import client_app, task

    client = ClientApp()
    client.train()(client_app.train)
    server = ServerApp()
    out: dict[str, float] = {}

    @server.main()
    def main(grid: object, ctx: object) -> None:
        test_set = task.load_test_set(42, 0.2)
        fedavg = FedAvg(fraction_evaluate=0.0, min_train_nodes=sites, min_available_nodes=sites)
        strategy = fedavg
        if noise_multiplier is not None:
            strategy = dp.DPFedAvgFixed(
                fedavg,
                noise_multiplier=noise_multiplier,
                clipping_norm=0.5,
                unsafe_rng=np.random.default_rng(seed),
            )
        result = strategy.start(
            grid=grid,  # type: ignore[arg-type]
            initial_arrays=ArrayRecord(task.initial_parameters()),
            num_rounds=rounds,
            train_config=ConfigRecord({"learning-rate": 0.5}),
            evaluate_fn=lambda rnd, arrays: MetricRecord(
                {"accuracy": task.evaluate(arrays.to_numpy_ndarrays(), test_set)[1]}
            ),
        )
        out["accuracy"] = float(result.evaluate_metrics_serverapp[rounds]["accuracy"])

    config = {
        "local-epochs": 5,
        "batch-size": 16,
        "dirichlet-alpha": 1.0,
        "data-seed": 42,
        "test-fraction": 0.2,
    }
    run_local(server, client, num_nodes=sites, run_config=config, seed=seed)
    return out["accuracy"]


def bench_accuracy(seeds: int, rounds: int, sites: int) -> None:
    sys.path.insert(0, str(_ROOT / "examples" / "hospital"))
    print(
        f"\nHospital example, {sites} sites, {rounds} rounds, C = 0.5, every site every round "
        f"(mean test accuracy over {seeds} seeds; ε site-level at δ = 1e-5, PLD):"
    )
    print(f"  {'noise z':>8}  {'ε (site-level)':>15}  {'accuracy':>8}  {'min..max':>12}")
    for z in (None, 4.0, 2.0, 1.0, 0.7, 0.5, 0.3):
        accs = [_hospital_accuracy(z, seed, rounds, sites) for seed in range(seeds)]
        if z is None:
            label, eps = "no DP", "∞"
        else:
            label = f"{z:g}"
            value = dp.epsilon(noise_multiplier=z, sampling_rate=1.0, rounds=rounds, delta=1e-5)
            eps = f"{value:.1f}"
        spread = f"{min(accs):.3f}..{max(accs):.3f}"
        print(f"  {label:>8}  {eps:>15}  {statistics.mean(accs):8.3f}  {spread:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000, help="update size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    bench_overhead(args.values, args.repeats)
    bench_accountant()
    if not args.skip_accuracy:
        bench_accuracy(args.seeds, args.rounds, args.sites)


if __name__ == "__main__":
    main()
