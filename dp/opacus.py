"""DP-SGD for PyTorch ClientApps through Opacus, with record-level accounting per run.

:func:`make_private` wraps a model, optimizer and data loader with Opacus
(Abadi et al. 2016, "Deep Learning with Differential Privacy": per-example gradient
clipping to ``max_grad_norm`` and Gaussian noise, batches drawn by Poisson sampling).
Either a ``noise_multiplier`` is given, or it is calibrated for a target
(epsilon, delta) with :func:`dp.accounting.noise_multiplier_for` over all the steps
the run will take (``rounds`` calls of ``epochs`` epochs).

Accounting is Greenhouse's own (:class:`dp.accounting.RunAccountant`, the same code
as central DP), fed with Opacus' step history. With a ``Context``, the history of
earlier rounds of the run is kept in ``context.state`` and the reported spend is
the run's cumulative record-level (epsilon, delta) at this site; :meth:`PrivateTraining.report`
adds it to the reply's metrics (``dp-epsilon-record``, ``dp-delta-record``).

Randomness: Opacus' ``secure_mode`` needs ``torchcsprng``, which is not available for
current torch releases. Instead each call creates torch generators seeded with 63
bits from the OS (:mod:`secrets`) for the noise and for Poisson sampling, never
torch's global generator. ``unsafe_seed`` makes them reproducible for tests.

torch and opacus are imported lazily: ``import dp`` works without them (they are the
optional ``torch`` extra).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any

from appliance.context import Context
from appliance.logs import get_logger
from appliance.records import MetricRecord
from dp.accounting import Accountant, RunAccountant, check_count, noise_multiplier_for
from dp.clipping import check_clipping_norm
from dp.errors import DPError, InvalidPrivacyParameter
from dp.spend import PrivacySpend, PrivacyUnit, check_delta

__all__ = ["PrivateTraining", "make_private"]

STATE_KEY = "dp.opacus"
_log = get_logger("dp.opacus")


def _import_opacus() -> tuple[Any, Any]:
    try:
        import opacus  # optional dependency, imported on use
        import torch
    except ImportError as exc:
        raise DPError("DP-SGD needs torch and opacus (install greenhouse-fl[torch])") from exc
    return torch, opacus


def _generator(torch: Any, seed: int | None) -> Any:
    gen = torch.Generator()
    gen.manual_seed(secrets.randbits(63) if seed is None else seed)
    return gen


def _load_history(context: Context | None) -> list[tuple[float, float, int]]:
    if context is None:
        return []
    record = context.state.get(STATE_KEY)
    if not isinstance(record, MetricRecord):
        return []
    zs, qs, steps = record["noise-multipliers"], record["sample-rates"], record["steps"]
    return [(float(z), float(q), int(n)) for z, q, n in zip(zs, qs, steps, strict=True)]


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: the wrapped objects and the run's accounting."""

    module: Any
    optimizer: Any
    data_loader: Any
    noise_multiplier: float
    sample_rate: float
    delta: float
    accountant: Accountant
    privacy_engine: Any
    context: Context | None = None
    prior: list[tuple[float, float, int]] = field(default_factory=list)

    def history(self) -> list[tuple[float, float, int]]:
        """(noise multiplier, sample rate, steps) of earlier rounds and of this one so far."""
        current = [
            (float(z), float(q), int(n)) for z, q, n in self.privacy_engine.accountant.history
        ]
        return [*self.prior, *current]

    def spend(self) -> PrivacySpend:
        """The run's cumulative record-level (epsilon, delta) at this site."""
        run = RunAccountant(delta=self.delta, unit=PrivacyUnit.RECORD, accountant=self.accountant)
        for z, q, steps in self.history():
            if steps:
                run.add_rounds(noise_multiplier=z, sampling_rate=q, count=steps)
        return run.spend()

    def report(self, metrics: MetricRecord | None = None) -> MetricRecord:
        """``metrics`` plus the cumulative spend; saves the step history in the context."""
        out = MetricRecord() if metrics is None else metrics
        history = self.history()
        if self.context is not None:
            self.context.state[STATE_KEY] = MetricRecord(
                {
                    "noise-multipliers": [z for z, _, _ in history],
                    "sample-rates": [q for _, q, _ in history],
                    "steps": [n for _, _, n in history],
                }
            )
        out.update(self.spend().to_metrics())
        out["dp-sgd-noise-multiplier"] = self.noise_multiplier
        return out


def make_private(
    module: Any,
    optimizer: Any,
    data_loader: Any,
    *,
    max_grad_norm: float,
    delta: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    epochs: int = 1,
    rounds: int = 1,
    context: Context | None = None,
    accountant: Accountant = "rdp",
    unsafe_seed: int | None = None,
) -> PrivateTraining:
    """Make ``module``/``optimizer``/``data_loader`` train with DP-SGD (Opacus).

    Args:
        module: a ``torch.nn.Module`` (Opacus-compatible layers).
        optimizer: its optimizer.
        data_loader: a ``torch.utils.data.DataLoader`` over the site's records; its
            batch size over the data set size is the sampling rate.
        max_grad_norm: per-example gradient clipping norm.
        delta: the delta at which epsilon is reported (and calibrated).
        noise_multiplier: the noise multiplier; give this or ``target_epsilon``.
        target_epsilon: calibrate the noise so ``rounds`` calls of ``epochs`` epochs
            spend at most this record-level epsilon.
        epochs: epochs per call (for calibration).
        rounds: calls planned in this run (for calibration).
        context: the ClientApp's context: keeps the run's step history across rounds.
        accountant: ``"rdp"`` or ``"pld"``.
        unsafe_seed: seed the noise and sampling generators (tests only; logged).

    Returns:
        The wrapped objects and the accounting.

    Raises:
        DPError: torch or opacus is not installed.
        InvalidPrivacyParameter: both or neither of ``noise_multiplier`` and
            ``target_epsilon``, or a parameter out of range.
        AccountingError: calibration failed.
    """
    torch, opacus = _import_opacus()
    check_clipping_norm(max_grad_norm, "max_grad_norm")
    d = check_delta(delta, allow_zero=False)
    if (noise_multiplier is None) == (target_epsilon is None):
        raise InvalidPrivacyParameter("give exactly one of noise_multiplier and target_epsilon")
    batches = len(data_loader)
    if batches < 1:
        raise InvalidPrivacyParameter("the data loader yields no batch")
    sample_rate = 1.0 / batches
    if target_epsilon is not None:
        steps = check_count(epochs, "epochs", minimum=1) * check_count(rounds, "rounds", minimum=1)
        noise_multiplier = noise_multiplier_for(
            epsilon=target_epsilon,
            delta=d,
            sampling_rate=sample_rate,
            rounds=steps * batches,
            accountant=accountant,
        )
    assert noise_multiplier is not None
    if unsafe_seed is not None:
        _log.warning("DP-SGD with seeded generators: reproducible, for tests only")
    with warnings.catch_warnings():
        # Opacus warns that its torchcsprng mode is off; the generators below replace it.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = opacus.PrivacyEngine(accountant="rdp", secure_mode=False)
    # Poisson sampling draws from ``secure_rng`` when set; noise from ``noise_generator``.
    engine.secure_rng = _generator(torch, None if unsafe_seed is None else unsafe_seed + 1)
    private_module, private_optimizer, private_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        poisson_sampling=True,
        noise_generator=_generator(torch, unsafe_seed),
    )
    return PrivateTraining(
        module=private_module,
        optimizer=private_optimizer,
        data_loader=private_loader,
        noise_multiplier=float(noise_multiplier),
        sample_rate=sample_rate,
        delta=d,
        accountant=accountant,
        privacy_engine=engine,
        context=context,
        prior=_load_history(context),
    )
