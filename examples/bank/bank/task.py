"""Data, model, training and metrics of the bank example: fraud detection with DP-SGD.

The data are synthetic card and transfer transactions, generated on the spot from a
seed (nothing is downloaded, nothing is shipped). About 1% of them are fraud.

* **Legitimate** transactions follow the habits of the customer who made them. There
  are three customer segments: *established* customers (older accounts, card present,
  groceries and fuel, daytime, close to home), *digital* customers (young accounts,
  online shopping, evenings, more devices) and *travellers* (large amounts, far from
  home, restaurants and cash abroad).
* **Fraud** comes in three typologies: *card-not-present* (stolen card details used
  online: new device, electronics and gift cards, at night, card testing with tiny
  amounts), *skimmed card* (a counterfeit card used in person far from home: cash
  and fuel, late, a burst of transactions) and *account takeover* (large transfers
  from a hijacked account on a new device). Part of every fraudulent transaction
  looks like its victim's normal behaviour, so the classes overlap.

The banks are non-IID: each has its own size, its own customer mix, its own fraud
rate (0.5%, 1% and 2% for the first three) and its own mix of fraud typologies (the
regional bank mostly sees skimmed cards, the digital bank mostly online fraud and
account takeovers). A bank generates its transactions from ``(seed, partition-id)``
alone and splits them into local training and validation data. The server's test
set is a separate market-wide sample at a 1% fraud rate (think of a card scheme's
benchmark file), independent of how many banks take part.

Features are standardized with fixed reference constants (published like
image-normalization means), so every bank applies the same transform without
sharing statistics of its customers.

Metrics are the ones fraud teams use when positives are rare: the area under the
precision-recall curve (average precision, AUPRC; a random score gets the fraud rate)
and the recall at a fixed false-positive rate (the share of fraud caught when 1% of
legitimate transactions may be flagged). Accuracy says nothing here: flagging
nothing scores 99%.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

from appliance import Context, MetricRecord
from dp.accounting import Accountant
from dp.opacus import make_private
from dp.plan import DPPlan, PlanMode

Array = np.ndarray

#: Merchant categories (one-hot in the model's inputs).
CATEGORIES = ("grocery", "restaurant", "fuel", "online-retail", "electronics-giftcards", "cash")
#: Raw transaction fields, in column order.
RAW_FIELDS = (
    "amount",
    "hour",
    "category",
    "distance-km",
    "transactions-24h",
    "card-present",
    "new-device",
    "account-age-months",
    "amount-vs-usual",
)
#: Model inputs, in column order (what :func:`standardize` returns).
FEATURES = (
    "log-amount",
    "hour-sin",
    "hour-cos",
    *(f"category-{name}" for name in CATEGORIES),
    "log-distance",
    "log-transactions-24h",
    "card-present",
    "new-device",
    "log-account-age",
    "log-amount-vs-usual",
)
SEGMENTS = ("established", "digital", "traveller")
TYPOLOGIES = ("card-not-present", "skimmed-card", "account-takeover")


@dataclass(frozen=True)
class Profile:
    """A bank (or the market): customer mix, fraud rate, fraud typology mix, size."""

    segments: tuple[float, ...]  # probabilities over SEGMENTS
    fraud_rate: float
    typologies: tuple[float, ...]  # probabilities over TYPOLOGIES, for the fraud
    size: int


#: The first three banks; further banks (``--nodes`` > 3) get a seeded random profile.
BANK_PROFILES = (
    Profile((0.75, 0.15, 0.10), 0.005, (0.05, 0.90, 0.05), 24_000),  # regional savings bank
    Profile((0.45, 0.35, 0.20), 0.010, (0.45, 0.30, 0.25), 30_000),  # national bank
    Profile((0.10, 0.80, 0.10), 0.020, (0.60, 0.05, 0.35), 16_000),  # digital bank
)
#: The market-wide test sample (its size comes from the run config).
MARKET = Profile((0.45, 0.40, 0.15), 0.010, (0.45, 0.25, 0.30), 0)
#: Probability that one feature of a fraudulent transaction looks like the victim's habits.
CAMOUFLAGE = 0.3
#: Seed streams, so banks, the test sample and training never share random numbers.
_STREAM_BANK, _STREAM_TEST, _STREAM_SPLIT = 1, 2, 3


@dataclass(frozen=True)
class Behaviour:
    """How one segment's (or one fraud typology's) transactions are distributed."""

    categories: tuple[float, ...]  # probabilities over CATEGORIES
    amount: tuple[float, float]  # median, log-std
    hour: tuple[float, float]  # mean, std (hours, wrapped around midnight); std 0: uniform
    distance: tuple[float, float]  # median km, log-std
    velocity: float  # mean number of transactions in the last 24 hours
    card_present: float  # probability
    new_device: float  # probability, for card-not-present transactions
    account_months: float  # mean account age (segments only)


_LEGIT: dict[str, Behaviour] = {
    "established": Behaviour(
        (0.35, 0.15, 0.20, 0.15, 0.03, 0.12), (35, 0.9), (13, 3.5), (5, 1.0), 2.0, 0.85, 0.02, 150
    ),
    "digital": Behaviour(
        (0.20, 0.20, 0.05, 0.40, 0.08, 0.07), (25, 1.0), (18, 4.5), (4, 1.1), 4.0, 0.35, 0.08, 30
    ),
    "traveller": Behaviour(
        (0.10, 0.30, 0.10, 0.25, 0.05, 0.20), (80, 1.1), (14, 5.0), (80, 2.0), 3.5, 0.60, 0.06, 90
    ),
}
_FRAUD: dict[str, Behaviour] = {
    "card-not-present": Behaviour(
        (0.00, 0.05, 0.00, 0.45, 0.45, 0.05), (120, 1.3), (3, 4.0), (300, 1.5), 6.0, 0.0, 0.6, 0
    ),
    "skimmed-card": Behaviour(
        (0.15, 0.05, 0.20, 0.00, 0.15, 0.45), (200, 0.8), (22, 4.0), (150, 1.5), 5.0, 1.0, 0.0, 0
    ),
    "account-takeover": Behaviour(
        (0.00, 0.00, 0.00, 0.05, 0.25, 0.70), (600, 1.0), (12, 0.0), (500, 1.5), 3.0, 0.0, 0.85, 0
    ),
}


def dp_sgd_plan(run_config: Mapping[str, object]) -> DPPlan | None:
    """The run's DP plan (``dp-mode = "dp-sgd"``), or ``None`` for a run without DP.

    The plan keys (``dp-mode``, ``dp-target-epsilon``, ``dp-delta``, ``dp-rounds``,
    ``dp-accountant``) are the ones the SuperLink shows and each bank's SuperNode
    books in its privacy-budget ledger, so the app calibrates its noise to exactly
    what is booked.

    Raises:
        InvalidPrivacyParameter: a ``dp-*`` key is unknown, missing or out of range.
        ValueError: the plan asks for central DP, which this example does not do.
    """
    plan = DPPlan.from_run_config(run_config)
    if plan is not None and plan.mode is not PlanMode.DP_SGD:
        raise ValueError(f"the bank example trains with dp-mode 'dp-sgd' or '', not {plan.mode}")
    return plan


@dataclass(frozen=True)
class Split:
    """Standardized features ``x`` (float32, one row per transaction), labels ``y`` (1 = fraud)."""

    x: Array
    y: Array

    def __len__(self) -> int:
        return len(self.y)

    @property
    def fraud_rate(self) -> float:
        return float(np.mean(self.y, dtype=np.float64)) if len(self.y) else math.nan


def standardize(raw: Array) -> Array:
    """Raw transactions (columns as :data:`RAW_FIELDS`) to the model's inputs.

    Skewed quantities are log-transformed, the hour goes round the clock, the merchant
    category is one-hot; centers and scales are fixed constants, not statistics of
    any bank.
    """
    amount, hour, category, distance, velocity, present, device, months, ratio = raw.T
    angle = 2.0 * np.pi * hour / 24.0
    one_hot = np.eye(len(CATEGORIES))[category.astype(int)]
    return np.column_stack(
        [
            (np.log(amount) - np.log(40.0)) / 1.2,
            np.sin(angle),
            np.cos(angle),
            one_hot,
            (np.log1p(distance) - 2.5) / 1.5,
            (np.log1p(velocity) - 1.3) / 0.6,
            present,
            device,
            (np.log1p(months) - 4.0) / 1.0,
            np.log(ratio) / 1.0,
        ]
    ).astype(np.float32)


def _draw(b: Behaviour, k: int, rng: np.random.Generator) -> dict[str, Array]:
    """``k`` transactions' fields drawn from behaviour ``b`` (no account age, no ratio)."""
    if b.hour[1] > 0:
        hour = np.floor(rng.normal(*b.hour, k)) % 24
    else:
        hour = rng.integers(0, 24, k).astype(float)
    present = (rng.random(k) < b.card_present).astype(float)
    return {
        "amount": np.exp(rng.normal(np.log(b.amount[0]), b.amount[1], k)),
        "hour": hour,
        "category": rng.choice(len(CATEGORIES), size=k, p=b.categories).astype(float),
        "distance-km": np.exp(rng.normal(np.log(b.distance[0]), b.distance[1], k)),
        "transactions-24h": rng.poisson(b.velocity, k).astype(float) + 1.0,
        "card-present": present,
        "new-device": (1.0 - present) * (rng.random(k) < b.new_device),
    }


def _transactions(profile: Profile, n: int, rng: np.random.Generator) -> tuple[Array, Array]:
    """``n`` transactions of customers mixed as in ``profile``: raw fields, labels."""
    segment = rng.choice(len(SEGMENTS), size=n, p=profile.segments)
    fraud = rng.random(n) < profile.fraud_rate
    typology = rng.choice(len(TYPOLOGIES), size=n, p=profile.typologies)
    fields: dict[str, Array] = {name: np.empty(n) for name in RAW_FIELDS}
    usual = np.empty(n)  # the customer's usual amount
    for s, name in enumerate(SEGMENTS):
        b = _LEGIT[name]
        rows = np.flatnonzero(segment == s)
        habits = _draw(b, len(rows), rng)  # what the customer normally does
        for key, values in habits.items():
            fields[key][rows] = values
        fields["account-age-months"][rows] = rng.gamma(2.0, b.account_months / 2.0, len(rows))
        usual[rows] = b.amount[0] * np.exp(rng.normal(0.0, 0.3, len(rows)))
        for t, kind in enumerate(TYPOLOGIES):
            hit = np.flatnonzero(fraud[rows] & (typology[rows] == t))
            if not len(hit):
                continue
            theirs = _draw(_FRAUD[kind], len(hit), rng)
            for key, values in theirs.items():
                # Camouflage: some features keep the victim's normal pattern.
                keep = rng.random(len(hit)) < CAMOUFLAGE
                fields[key][rows[hit]] = np.where(keep, fields[key][rows[hit]], values)
            if kind == "card-not-present":
                testing = rng.random(len(hit)) < 0.2  # card testing: tiny amounts first
                small = np.exp(rng.normal(np.log(2.0), 0.5, len(hit)))
                fields["amount"][rows[hit]] = np.where(testing, small, fields["amount"][rows[hit]])
    fields["amount"] = np.round(np.maximum(fields["amount"], 0.5), 2)
    fields["new-device"] *= 1.0 - fields["card-present"]
    fields["amount-vs-usual"] = fields["amount"] / usual
    raw = np.column_stack([fields[name] for name in RAW_FIELDS])
    return raw, fraud.astype(np.float32)


def bank_profile(partition_id: int, seed: int) -> Profile:
    """The profile of bank ``partition_id``.

    The first three banks have fixed profiles; further banks (``--nodes`` > 3) draw
    theirs (customer and typology mixes, a fraud rate of 0.4% to 2%, a size),
    seeded, so any number of banks is possible.
    """
    if partition_id < 0:
        raise ValueError(f"partition-id must be >= 0, got {partition_id}")
    if partition_id < len(BANK_PROFILES):
        return BANK_PROFILES[partition_id]
    rng = np.random.default_rng([seed, _STREAM_BANK, partition_id, 0])
    segments = tuple(float(v) for v in rng.dirichlet(np.ones(len(SEGMENTS))))
    typologies = tuple(float(v) for v in rng.dirichlet(np.ones(len(TYPOLOGIES))))
    rate = float(rng.uniform(0.004, 0.02))
    return Profile(segments, rate, typologies, int(rng.integers(12_000, 30_000)))


@cache
def _bank(partition_id: int, seed: int, validation_fraction: float) -> tuple[Split, Split]:
    profile = bank_profile(partition_id, seed)
    rng = np.random.default_rng([seed, _STREAM_BANK, partition_id])
    raw, y = _transactions(profile, profile.size, rng)
    x = standardize(raw)
    order = np.random.default_rng([seed, _STREAM_SPLIT, partition_id]).permutation(profile.size)
    cut = round((1.0 - validation_fraction) * profile.size)
    train, val = order[:cut], order[cut:]
    return Split(x[train], y[train]), Split(x[val], y[val])


def load_bank_data(
    partition_id: int, num_partitions: int, *, seed: int, validation_fraction: float
) -> tuple[Split, Split]:
    """Bank ``partition_id``'s own transactions: local training and validation data."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation-fraction must be in (0, 1), got {validation_fraction}")
    return _bank(partition_id, seed, validation_fraction)


@cache
def load_test_set(seed: int, size: int) -> Split:
    """The held-out, market-wide test sample the server evaluates on (1% fraud)."""
    raw, y = _transactions(MARKET, size, np.random.default_rng([seed, _STREAM_TEST]))
    return Split(standardize(raw), y)


class Net(nn.Module):
    """A small MLP: the features, one hidden ReLU layer, one logit (Opacus-compatible)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = nn.Linear(len(FEATURES), hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.out(torch.relu(self.hidden(x)))
        return logits.squeeze(-1)


def initial_parameters(seed: int, hidden: int = 32) -> dict[str, Array]:
    """The global model's starting weights (PyTorch's default init, seeded)."""
    torch.manual_seed(seed)
    return get_parameters(Net(hidden))


def get_parameters(model: nn.Module) -> dict[str, Array]:
    """The model's weights by name, as float32 numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def model_from(params: dict[str, Array]) -> Net:
    """A :class:`Net` holding ``params`` (its hidden width is read from them)."""
    model = Net(hidden=int(params["hidden.weight"].shape[0]))
    model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in params.items()})
    return model


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the caller's setting.

    The model is tiny: torch's intra-op threads cost more in synchronization than
    they save (DP-SGD was about 8 times slower with two threads on two busy cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loader(data: Split, batch_size: int, shuffle: bool, seed: int) -> Any:
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator
    )


def _loss_fn(pos_weight: float) -> nn.Module:
    """Cross-entropy with fraud weighted ``pos_weight`` times a legitimate transaction."""
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))


def _epochs(model: nn.Module, optimizer: Any, loader: Any, epochs: int, pos_weight: float) -> None:
    loss_fn = _loss_fn(pos_weight)
    model.train()
    with one_thread(), warnings.catch_warnings():
        # Opacus' per-sample-gradient hooks make torch warn that the inputs need no
        # gradient; that is expected (they are data) and harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(epochs):
            for x, y in loader:
                if not len(y):
                    continue  # Poisson sampling can draw an empty batch
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()


def _optimizer(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    # Adam adapts the step size per weight, so one learning rate suits both the
    # clipped, noisy gradients of DP-SGD and the raw ones of the non-private baselines.
    return torch.optim.Adam(model.parameters(), lr=learning_rate)


def train_private(
    params: dict[str, Array],
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    pos_weight: float,
    max_grad_norm: float,
    target_epsilon: float,
    delta: float,
    rounds: int,
    context: Context | None,
    accountant: Accountant = "rdp",
    noise_multiplier: float | None = None,
) -> tuple[dict[str, Array], MetricRecord]:
    """``epochs`` epochs of DP-SGD on ``data``; new weights and the reply's metrics.

    Each example's gradient is clipped to ``max_grad_norm`` and Gaussian noise is
    added to their sum (Opacus); the optimizer (Adam) only post-processes that noisy
    gradient, so the guarantee is the DP-SGD one.

    The noise is calibrated so that ``rounds`` calls like this one (the whole run)
    spend at most ``target_epsilon`` at ``delta``, record-level. With the ClientApp's
    ``context`` the reported spend is the run's cumulative spend at this bank.
    Calibration takes a fraction of a second; later rounds of a run can pass the
    ``noise_multiplier`` the first one reported (same data, same plan, same noise).

    The class weight is inside the per-example loss, so it is clipped with the rest
    and costs no privacy (batches stay Poisson-sampled; re-balancing the sampling
    would break the accounting).
    """
    model = model_from(params)
    private = make_private(
        model,
        _optimizer(model, learning_rate),
        _loader(data, batch_size, shuffle=False, seed=0),  # Opacus Poisson-samples it
        max_grad_norm=max_grad_norm,
        delta=delta,
        target_epsilon=target_epsilon if noise_multiplier is None else None,
        noise_multiplier=noise_multiplier,
        epochs=epochs,
        rounds=rounds,
        context=context,
        accountant=accountant,
    )
    _epochs(private.module, private.optimizer, private.data_loader, epochs, pos_weight)
    metrics = private.report(MetricRecord({"num-examples": len(data)}))
    return get_parameters(model), metrics


def train_plain(
    params: dict[str, Array],
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    pos_weight: float,
    seed: int,
) -> dict[str, Array]:
    """``epochs`` epochs of ordinary (non-private) mini-batch SGD on ``data``."""
    model = model_from(params)
    loader = _loader(data, batch_size, shuffle=True, seed=seed)
    _epochs(model, _optimizer(model, learning_rate), loader, epochs, pos_weight)
    return get_parameters(model)


def average_precision(scores: Array, y: Array) -> float:
    """Area under the precision-recall curve, as average precision.

    The sum over score thresholds (highest first, tied scores taken together) of the
    precision there times the recall gained there; the same definition as
    scikit-learn's ``average_precision_score``. A random score gets the fraud rate.
    """
    positives = float(np.sum(y))
    if positives == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], y[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each group of ties
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1.0)
    recall_gain = np.diff(np.r_[0.0, tp]) / positives
    return float(np.sum(precision * recall_gain))


def recall_at_fpr(scores: Array, y: Array, fpr: float) -> float:
    """Share of fraud caught when at most ``fpr`` of legitimate transactions are flagged.

    The alert threshold is the strictest one that flags no more than
    ``floor(fpr * legitimate)`` legitimate transactions (ties are not split).
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    positive = y == 1
    if not positive.any() or positive.all():
        return math.nan
    negatives = np.sort(scores[~positive])[::-1]
    allowed = math.floor(fpr * len(negatives) + 1e-9)
    if allowed >= len(negatives):
        return 1.0
    threshold = negatives[allowed]  # flag strictly above the (allowed+1)-th highest
    return float(np.mean(scores[positive] > threshold))


def evaluate(
    params: dict[str, Array], data: Split, *, fpr: float, pos_weight: float = 1.0
) -> dict[str, float]:
    """AUPRC, recall at false-positive rate ``fpr`` and (class-weighted) loss on ``data``."""
    model = model_from(params)
    model.eval()
    with one_thread(), torch.no_grad():
        logits = model(torch.from_numpy(data.x))
        loss = float(_loss_fn(pos_weight)(logits, torch.from_numpy(data.y)))
    scores = logits.numpy().astype(np.float64)
    return {
        "loss": loss,
        "auprc": average_precision(scores, data.y),
        "recall-at-fpr": recall_at_fpr(scores, data.y, fpr),
    }


def fedavg_plain(
    bank_ids: list[int],
    *,
    rounds: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    pos_weight: float,
    seed: int,
    validation_fraction: float,
    hidden: int,
) -> dict[str, Array]:
    """The model the banks ``bank_ids`` train without DP: what ``dp-sgd=false`` computes.

    The same rounds, local epochs and initial weights as a run, FedAvg weighted by
    the banks' numbers of training examples, each bank shuffling with the round
    number as its ClientApp does. With one bank it is that bank training alone on
    the same schedule. The server can compute it only because the data are synthetic
    and seeded; in real life these baselines come from separate runs.
    """
    params = initial_parameters(seed, hidden)
    banks = [_bank(i, seed, validation_fraction)[0] for i in bank_ids]
    for server_round in range(1, rounds + 1):
        updates = [
            train_plain(
                params,
                bank,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                pos_weight=pos_weight,
                seed=server_round,
            )
            for bank in banks
        ]
        sums = {name: np.zeros(np.shape(value)) for name, value in params.items()}
        for update, bank in zip(updates, banks, strict=True):
            for name, total in sums.items():  # as FedAvg does: in float64, by examples
                np.add(total, np.multiply(update[name], len(bank), dtype=np.float64), out=total)
        examples = float(sum(len(bank) for bank in banks))
        params = {name: (total / examples).astype(np.float32) for name, total in sums.items()}
    return params
