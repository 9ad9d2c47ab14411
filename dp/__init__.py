"""Differential privacy for federated learning: mechanisms, accounting, budgets.

What ``dp`` guarantees, and where:

* clipping bounds every update's L2 norm exactly (``dp.clipping``);
* noise comes from fresh OS-seeded generators, never a global RNG (``dp.rng``);
* central DP-FedAvg with fixed or adaptive clipping, server- or site-side
  (``dp.strategy``), client-side clipping and local DP mods (``dp.mods``),
  distributed Skellam noise shares for SecAgg+ (``dp.distributed``), DP-SGD
  through Opacus (``dp.opacus``, optional torch extra);
* every epsilon is computed by a real accountant (``dp.accounting``, Google's
  dp-accounting, RDP and PLD) and carries its delta and privacy unit
  (:class:`PrivacySpend`);
* each site's budget ledger refuses plans over its caps and records spending
  atomically (``dp.ledger``).

Unclipped noise lives in ``dp.primitives`` and is imported only by this package.
``dp`` imports only the leaf layer of ``appliance`` (records, messages, apps,
strategies); see ``docs/dp.md``.

Example:
    >>> from appliance.strategy import FedAvg
    >>> from dp import DPFedAvgFixed, ClientSideClippingMod, epsilon
    >>> round(epsilon(noise_multiplier=1.0, sampling_rate=0.1, rounds=100,
    ...               delta=1e-5, accountant="rdp"), 2)
    7.9
    >>> strategy = DPFedAvgFixed(FedAvg(), noise_multiplier=1.0, clipping_norm=0.5)
    >>> strategy.spent.epsilon
    0.0
    >>> mod = ClientSideClippingMod(max_clipping_norm=1.0)   # ClientApp(mods=[mod])
"""

from dp.accounting import (
    Accountant,
    RunAccountant,
    epsilon,
    epsilon_fixed_cohort,
    noise_multiplier_for,
    planned_spend,
)
from dp.clipping import ClippedUpdate, ClipResult, clip_arrays, clip_update, l2_norm, model_delta
from dp.distributed import (
    SkellamPlan,
    add_noise_share,
    dequantize,
    from_modular,
    quantize,
    required_modulus_bits,
    skellam_spend,
    to_modular,
)
from dp.errors import (
    AccountingError,
    BudgetExceeded,
    ClippingNormRefused,
    DPError,
    InvalidPrivacyParameter,
    InvalidUpdateError,
    LedgerError,
    LedgerStateError,
    NoBudget,
    StorageError,
)
from dp.ledger import Budget, BudgetLedger, BudgetStatus, PlanCheck
from dp.mechanisms import (
    ClippedSum,
    adapt_clipping_norm,
    local_dp_noise_std,
    split_noise_multiplier,
)
from dp.mods import ClientSideClippingMod, LocalDPMod
from dp.opacus import PrivateTraining, make_private
from dp.rng import secure_rng
from dp.spend import PrivacySpend, PrivacyUnit
from dp.strategy import (
    DPFedAvgAdaptive,
    DPFedAvgClientSideAdaptive,
    DPFedAvgClientSideFixed,
    DPFedAvgFixed,
)

__all__ = [
    "Accountant",
    "AccountingError",
    "Budget",
    "BudgetExceeded",
    "BudgetLedger",
    "BudgetStatus",
    "ClientSideClippingMod",
    "ClipResult",
    "ClippedSum",
    "ClippedUpdate",
    "ClippingNormRefused",
    "DPError",
    "DPFedAvgAdaptive",
    "DPFedAvgClientSideAdaptive",
    "DPFedAvgClientSideFixed",
    "DPFedAvgFixed",
    "InvalidPrivacyParameter",
    "InvalidUpdateError",
    "LedgerError",
    "LedgerStateError",
    "LocalDPMod",
    "NoBudget",
    "PlanCheck",
    "PrivacySpend",
    "PrivacyUnit",
    "PrivateTraining",
    "RunAccountant",
    "SkellamPlan",
    "StorageError",
    "adapt_clipping_norm",
    "add_noise_share",
    "clip_arrays",
    "clip_update",
    "dequantize",
    "epsilon",
    "epsilon_fixed_cohort",
    "from_modular",
    "l2_norm",
    "local_dp_noise_std",
    "make_private",
    "model_delta",
    "noise_multiplier_for",
    "planned_spend",
    "quantize",
    "required_modulus_bits",
    "secure_rng",
    "skellam_spend",
    "split_noise_multiplier",
    "to_modular",
]
