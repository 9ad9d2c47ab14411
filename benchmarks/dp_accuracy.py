"""Accuracy against ε: the examples trained with DP at several noise levels, next to no DP.

Usage::

    python benchmarks/dp_accuracy.py              # hospital, central DP (about 30 s)
    python benchmarks/dp_accuracy.py --bank       # also the bank, DP-SGD (about 2.5 min more)
    python benchmarks/dp_accuracy.py --repeats 20 --bank-repeats 5

Hospital: ``examples/hospital`` as ``greenhouse run --local examples/hospital --nodes 3``
runs it (the local runner, one process), with its own run config (8 rounds, C = 0.5,
every hospital every round) and central DP (``dp-mode = "central"``) at each noise
multiplier z; z = 0 is the same run without DP, and z = 0.001 (next to no noise) shows
what clipping to C alone costs. The ε column is the run's DP plan
(:class:`dp.plan.DPPlan`, what the SuperLink shows and each hospital books):
site-level, at the plan's δ, with the plan's accountant.

Bank: ``examples/bank`` with DP-SGD (Opacus) at several record-level targets ε
(``dp-target-epsilon``), without the ServerApp's own baselines; the ε column is the
largest spend the banks reported. The no-DP run is seeded, hence exact: it runs once.

The DP noise comes from fresh OS-seeded generators (``dp.secure_rng``; by design it
cannot be seeded from the run config), so the repeats of one row are independent
noise draws over the same data (``data-seed`` stays the app's); the local runner's
``seed`` (node ids) is the repeat's index. Accuracy is the ServerApp's final test
accuracy (AUPRC and recall at 1% FPR for the bank), as mean ± sample std and range.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# benchmarks/dp.py is named like the dp package: drop this folder from sys.path and
# import from the repository root.
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_ROOT))

import structlog  # noqa: E402

from appliance.appconfig import load_app_spec, merge_run_config  # noqa: E402
from appliance.context import UserConfig  # noqa: E402
from appliance.local import LocalRun, run_local_app  # noqa: E402
from dp.plan import DPPlan  # noqa: E402

HOSPITAL = _ROOT / "examples" / "hospital"
BANK = _ROOT / "examples" / "bank"
# 0: no DP. 0.001: clipping and equal weighting with next to no noise (ε is huge), to
# tell what the clipping costs from what the noise costs.
NOISE_MULTIPLIERS = (0.0, 0.001, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
TARGET_EPSILONS = (8.0, 4.0, 2.0, 1.0, 0.5)


def _run(app: Path, overrides: UserConfig, seed: int) -> LocalRun:
    """One local run with 3 nodes, its printed output swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return run_local_app(app, num_nodes=3, run_config_overrides=overrides, seed=seed)


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.3f}..{max(values):.3f}"


def hospital_overrides(noise_multiplier: float) -> UserConfig:
    """The run config of one row: central DP at ``noise_multiplier``, or no DP at 0."""
    if noise_multiplier == 0:
        return {"dp-mode": "", "report-central-baseline": False}
    return {
        "dp-mode": "central",
        "dp-noise-multiplier": noise_multiplier,
        "report-central-baseline": False,
    }


def hospital_epsilon(overrides: UserConfig) -> str:
    """The plan's site-level ε for the app's config with ``overrides``, as text."""
    config = merge_run_config(load_app_spec(HOSPITAL).config, overrides)
    plan = DPPlan.from_run_config(config)
    if plan is None:
        return "∞"
    epsilon = plan.spend().epsilon
    return f"{epsilon:.1f}" if epsilon < 1000 else f"{epsilon:.1e}"


def bench_hospital(repeats: int) -> None:
    spec = load_app_spec(HOSPITAL)
    cfg = spec.config
    plan = DPPlan.from_run_config({**cfg, **hospital_overrides(1.0)})
    assert plan is not None
    print(
        f"Hospital example, central DP (local runner): 3 hospitals, {cfg['num-server-rounds']} "
        f"rounds, C = {cfg['dp-clipping-norm']}, every hospital every round; ε site-level at "
        f"δ = {plan.delta:g} ({plan.accountant.upper()}, the run's DP plan); test accuracy over "
        f"{repeats} runs (mean ± std, min..max)\n"
    )
    print("| noise z | ε (site-level) | test accuracy | min..max |")
    print("|---|---|---|---|")
    baseline = None
    started = time.monotonic()
    for z in NOISE_MULTIPLIERS:
        overrides = hospital_overrides(z)
        accuracies = [
            float(_run(HOSPITAL, overrides, seed).server_context.state["result"]["accuracy"])
            for seed in range(repeats)
        ]
        baseline = baseline if baseline is not None else statistics.mean(accuracies)
        label = {0.0: "0 (no DP)", 0.001: "0.001 (≈ clipping only)"}.get(z, f"{z:g}")
        eps = hospital_epsilon(overrides)
        print(f"| {label} | {eps} | {_mean_std(accuracies)} | {_spread(accuracies)} |")
    print(
        f"\n({len(NOISE_MULTIPLIERS) * repeats} runs in {time.monotonic() - started:.1f} s; "
        f"no-DP baseline {baseline:.3f})"
    )


def _bank_row(target: float | None, repeats: int) -> tuple[str, list[float], list[float]]:
    overrides: UserConfig = {"report-baselines": False}
    if target is None:
        overrides["dp-mode"] = ""
    else:
        overrides["dp-target-epsilon"] = target
    auprc, recall, spent = [], [], []
    for seed in range(repeats):
        state = _run(BANK, overrides, seed).server_context.state
        auprc.append(float(state["result"]["auprc"]))
        recall.append(float(state["result"]["recall-at-fpr"]))
        if "privacy" in state:
            spent.append(float(state["privacy"]["dp-epsilon-record"]))
    epsilon = "∞" if not spent else f"{max(spent):.3f}"
    return epsilon, auprc, recall


def bench_bank(repeats: int) -> None:
    cfg = load_app_spec(BANK).config
    print(
        f"\nBank example, DP-SGD (Opacus, local runner): 3 banks, {cfg['num-server-rounds']} "
        f"rounds x {cfg['local-epochs']} local epochs, δ = {cfg['dp-delta']:g}; ε record-level "
        f"(the largest any bank reported); market-wide test set, {repeats} runs per target "
        f"(the no-DP run is seeded: 1 run)\n"
    )
    print("| target ε | ε spent (record-level) | AUPRC | recall @ 1% FPR |")
    print("|---|---|---|---|")
    started = time.monotonic()
    for target in (None, *TARGET_EPSILONS):
        epsilon, auprc, recall = _bank_row(target, 1 if target is None else repeats)
        label = "no DP" if target is None else f"{target:g}"
        print(
            f"| {label} | {epsilon} | {_mean_std(auprc)} ({_spread(auprc)}) | "
            f"{_mean_std(recall)} ({_spread(recall)}) |"
        )
    runs = 1 + len(TARGET_EPSILONS) * repeats
    print(f"\n({runs} runs in {time.monotonic() - started:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="hospital runs per z")
    parser.add_argument("--bank", action="store_true", help="also the bank (DP-SGD; torch)")
    parser.add_argument("--bank-repeats", type=int, default=3, help="bank runs per target ε")
    args = parser.parse_args()
    if args.repeats < 1 or args.bank_repeats < 1:
        parser.error("--repeats and --bank-repeats must be >= 1")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    bench_hospital(args.repeats)
    if args.bank:
        bench_bank(args.bank_repeats)


if __name__ == "__main__":
    main()
