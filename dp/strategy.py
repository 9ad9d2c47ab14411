"""DP-FedAvg strategy wrappers: central DP with fixed or adaptive clipping, server- or site-side.

Wrap any strategy (usually :class:`~appliance.strategy.FedAvg`): the wrapped
strategy chooses the cohort and the messages (``configure_*``) and evaluates; the
wrapper replaces training aggregation with the DP mean of DP-FedAvg (McMahan et
al. 2018) and accounts every round:

1. each reply's update ``u_i - w`` (new model minus the current global model) is
   clipped to L2 norm ``C`` -- by the server (:class:`DPFedAvgFixed`,
   :class:`DPFedAvgAdaptive`) or by the sites' :class:`~dp.mods.ClientSideClippingMod`,
   which the server then verifies (:class:`DPFedAvgClientSideFixed`,
   :class:`DPFedAvgClientSideAdaptive`: the variant that composes with SecAgg+);
2. clipped updates are summed as replies stream in (float64 running sum: memory
   O(model), not O(sites x model));
3. ``N(0, (z C)^2)`` is added to the sum, which is divided by the number ``m`` of
   aggregated sites: noise std ``z C / m`` on the mean, and ``w + mean`` is the new model.

Sites are weighted equally: weighting by example counts would make the sensitivity
depend on data. The privacy unit is the site (zero-out adjacency: one site's whole
update replaced by zeros), accounted with :class:`~dp.accounting.RunAccountant`.
With ``sampling_rate`` set, the wrapper Poisson-samples the wrapped strategy's
messages with secret randomness and accounts the amplification; otherwise it
accounts ``q = 1`` whatever the wrapped strategy sampled (its sampling RNG is seeded,
not secret).

What is *not* covered: site-reported training metrics are dropped unless
``unsafe_release_train_metrics=True`` (they are not noised), and federated
evaluation is delegated unchanged (its metrics are outside the guarantee; a site
policy may forbid them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.grid import Grid
from appliance.logs import get_logger
from appliance.message import Message
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from appliance.secure_aggregation import SecureAggregation
from appliance.strategy import Failure, Replies, Strategy, weighted_metrics_mean
from dp import keys
from dp.accounting import Accountant, RunAccountant, check_noise_multiplier, check_sampling_rate
from dp.clipping import check_clipping_norm, l2_norm, model_delta
from dp.errors import DPError, InvalidPrivacyParameter, InvalidUpdateError
from dp.mechanisms import (
    ClippedSum,
    adapt_clipping_norm,
    noised_count,
    split_noise_multiplier,
)
from dp.primitives.noise import add_gaussian_inplace
from dp.rng import noise_rng, warn_if_unsafe
from dp.spend import PrivacySpend, PrivacyUnit

__all__ = [
    "DPFedAvgAdaptive",
    "DPFedAvgClientSideAdaptive",
    "DPFedAvgClientSideFixed",
    "DPFedAvgFixed",
]

_log = get_logger("dp.strategy")


class _DPFedAvg(Strategy):
    """The shared round logic; subclasses decide who clips and whether ``C`` adapts."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        sampling_rate: float | None = None,
        delta: float = 1e-5,
        accountant: Accountant = "rdp",
        unsafe_rng: np.random.Generator | None = None,
        unsafe_release_train_metrics: bool = False,
    ) -> None:
        self.strategy = strategy
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.clipping_norm = check_clipping_norm(clipping_norm)
        self.sampling_rate = None if sampling_rate is None else check_sampling_rate(sampling_rate)
        self.arrayrecord_key: str = getattr(strategy, "arrayrecord_key", "arrays")
        self.weighted_by_key: str = getattr(strategy, "weighted_by_key", "num-examples")
        self.min_train_nodes: int = int(getattr(strategy, "min_train_nodes", 1))
        self.accountant = RunAccountant(delta=delta, unit=PrivacyUnit.SITE, accountant=accountant)
        self._unsafe_rng = unsafe_rng
        warn_if_unsafe(unsafe_rng, owner=type(self).__name__)
        self.release_train_metrics = unsafe_release_train_metrics
        if unsafe_release_train_metrics:
            _log.warning(
                "site training metrics are released without noise", owner=type(self).__name__
            )
        self._reference: ArrayRecord | None = None

    # -- what subclasses change ------------------------------------------------------------
    @property
    def update_noise_multiplier(self) -> float:
        """The noise multiplier of the update release (``z``, or ``z_Δ`` when ``C`` adapts)."""
        return self.noise_multiplier

    def _round_config(self, config: ConfigRecord) -> ConfigRecord:
        return config

    def _within_bit(self, reply: Message, deltas: list[npt.NDArray[np.float64]]) -> bool | None:
        """Check a reply before it is summed; client-side variants verify the site's clipping."""
        return None

    def _after_release(
        self, server_round: int, total: ClippedSum, within: int, metrics: MetricRecord
    ) -> None:
        """Hook run after a round released its update (adaptive clipping updates ``C``)."""

    # -- Strategy ---------------------------------------------------------------------------
    @property
    def spent(self) -> PrivacySpend:
        """The site-level (epsilon, delta) spent by the rounds released so far."""
        return self.accountant.spend()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The wrapped strategy's training messages, Poisson-sampled if ``sampling_rate`` is set.

        Raises:
            InvalidUpdateError: the model holds non-floating-point arrays.
        """
        for name, array in arrays.items():
            if array.dtype.kind != "f":
                raise InvalidUpdateError(
                    f"DP-FedAvg needs a floating-point model; array {name!r} is {array.dtype.name}"
                )
        messages = self.strategy.configure_train(
            server_round, arrays, self._round_config(ConfigRecord(config.items())), grid
        )
        if self.sampling_rate is not None and self.sampling_rate < 1:
            rng = noise_rng(self._unsafe_rng)
            messages = [m for m in messages if rng.random() < self.sampling_rate]
        self._reference = arrays
        return messages

    def aggregate_train(
        self, server_round: int, replies: Replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip (or verify), sum, noise and average the replies' updates; account the round."""
        reference = self._reference
        if reference is None:
            raise RuntimeError("aggregate_train called before configure_train")
        total = ClippedSum([a.shape for a in reference.values()], self.clipping_norm)
        within = 0
        contents: list[RecordDict] = []
        for reply in replies:
            try:
                update = reply.content.get(self.arrayrecord_key)
                if not isinstance(update, ArrayRecord):
                    raise InvalidUpdateError(f"reply has no ArrayRecord {self.arrayrecord_key!r}")
                deltas = model_delta(update, reference)
                bit = self._within_bit(reply, deltas)
                inside = total.add(deltas)
                within += int(inside if bit is None else bit)
            except DPError as exc:
                replies.reject(reply, str(exc))
                continue
            if self.release_train_metrics:
                contents.append(reply.content)
        if total.count < max(self.min_train_nodes, 1):
            _log.warning(
                "DP round released nothing: too few usable replies",
                round=server_round,
                usable_replies=total.count,
                min_train_nodes=self.min_train_nodes,
            )
            return None, None
        clipping_norm = total.clipping_norm
        mean = total.noised_mean(self.update_noise_multiplier, noise_rng(self._unsafe_rng))
        new = ArrayRecord(
            {
                name: (ref + d).astype(ref.dtype)
                for (name, ref), d in zip(reference.items(), mean, strict=True)
            }
        )
        self.accountant.add_rounds(
            noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate or 1.0
        )
        metrics = MetricRecord(
            weighted_metrics_mean(contents, self.weighted_by_key) if contents else {}
        )
        metrics.update(self.spent.to_metrics())
        metrics[keys.NOISE_MULTIPLIER] = self.noise_multiplier
        metrics[keys.CLIPPING_NORM] = clipping_norm
        metrics[keys.SITES_AGGREGATED] = total.count
        metrics[keys.NOISE_STD] = self.update_noise_multiplier * clipping_norm / total.count
        self._after_release(server_round, total, within, metrics)
        return new, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Delegated to the wrapped strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Replies) -> MetricRecord | None:
        """Delegated to the wrapped strategy (its metrics are outside the DP guarantee)."""
        return self.strategy.aggregate_evaluate(server_round, replies)


class DPFedAvgFixed(_DPFedAvg):
    """Central DP-FedAvg with server-side fixed clipping (McMahan et al. 2018).

    Args:
        strategy: the wrapped strategy (cohort, messages, evaluation).
        noise_multiplier: ``z``: noise std on the sum is ``z C``.
        clipping_norm: ``C``, the L2 bound on each site's update.
        sampling_rate: if set, each configured site joins a round with this
            probability (secret randomness), and the accountant uses it.
        delta: the delta at which epsilon is reported.
        accountant: ``"rdp"`` or ``"pld"``.
        unsafe_rng: a seeded generator for reproducible tests (logged as a warning).
        unsafe_release_train_metrics: pass the sites' (un-noised) training metrics on.

    Raises:
        InvalidPrivacyParameter: a parameter is out of range.
    """


class DPFedAvgClientSideFixed(_DPFedAvg):
    """Central DP-FedAvg whose sites clip (:class:`~dp.mods.ClientSideClippingMod`), server noise.

    The server sends ``C`` in the round's config; a reply whose update exceeds ``C``
    (a site that did not clip) is rejected. Arguments as :class:`DPFedAvgFixed`.
    """

    def _round_config(self, config: ConfigRecord) -> ConfigRecord:
        config[keys.CLIPPING_NORM] = self.clipping_norm
        return config

    def _within_bit(self, reply: Message, deltas: list[npt.NDArray[np.float64]]) -> bool | None:
        norm = l2_norm(deltas)
        if norm > self.clipping_norm:
            raise InvalidUpdateError(
                f"update norm {norm:.6g} exceeds the clipping norm {self.clipping_norm:.6g}: "
                "the site did not clip (is ClientSideClippingMod installed?)"
            )
        return None

    #: Under SecAgg+ the server learns only the sum of the sites' clipped updates, and
    #: the noise goes on that sum: the same mechanism, so this variant is linear.
    is_linear = True

    def aggregate_train_secure(
        self,
        server_round: int,
        messages: list[Message],
        grid: Grid,
        secure_aggregation: SecureAggregation,
        timeout: float,
    ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Failure]]:
        """DP-FedAvg under secure aggregation: noise on the securely summed clipped updates.

        Every site weighs 1 (:data:`dp.keys.UNIT_WEIGHT`, set by the sites' clipping),
        so the protocol reveals the mean of ``m`` clipped updates; adding
        ``N(0, (z C / m)^2)`` to it releases exactly what :meth:`aggregate_train`
        releases. The server cannot check each site's clipping here: that is the
        site's :class:`~dp.mods.ClientSideClippingMod` (a site policy enforces it).
        """
        reference = self._reference
        if reference is None:
            raise RuntimeError("aggregate_train_secure called before configure_train")
        if not messages:
            return None, None, []
        outcome = secure_aggregation.aggregate_round(
            grid,
            messages,
            reference=reference,
            arrays_key=self.arrayrecord_key,
            weighted_by_key=keys.UNIT_WEIGHT,
            timeout=timeout,
        )
        failures = [Failure(node_id, reason) for node_id, reason in outcome.failures]
        if outcome.error is not None:
            failures.append(Failure(0, f"secure aggregation failed: {outcome.error}"))
        count = outcome.contributors
        if outcome.arrays is None or count < max(self.min_train_nodes, 1):
            _log.warning(
                "DP round released nothing: too few contributors",
                round=server_round,
                contributors=count,
                error=outcome.error,
            )
            return None, None, failures
        rng = noise_rng(self._unsafe_rng)
        std = self.update_noise_multiplier * self.clipping_norm / count
        mean = model_delta(outcome.arrays, reference)
        for delta in mean:
            add_gaussian_inplace(delta, std, rng)
        new = ArrayRecord(
            {
                name: (ref + d).astype(ref.dtype)
                for (name, ref), d in zip(reference.items(), mean, strict=True)
            }
        )
        self.accountant.add_rounds(
            noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate or 1.0
        )
        metrics = MetricRecord(self.spent.to_metrics())
        metrics[keys.NOISE_MULTIPLIER] = self.noise_multiplier
        metrics[keys.CLIPPING_NORM] = self.clipping_norm
        metrics[keys.SITES_AGGREGATED] = count
        metrics[keys.NOISE_STD] = std
        return new, metrics, failures


class _Adaptive(_DPFedAvg):
    """Adaptive clipping state shared by the two adaptive wrappers (Andrew et al. 2021)."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        initial_clipping_norm: float = 0.1,
        target_quantile: float = 0.5,
        clip_learning_rate: float = 0.2,
        clipped_count_stddev: float | None = None,
        max_clipping_norm: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            strategy,
            noise_multiplier=noise_multiplier,
            clipping_norm=initial_clipping_norm,
            **kwargs,
        )
        if not 0 <= target_quantile <= 1:
            raise InvalidPrivacyParameter(
                f"target_quantile must be in [0, 1], got {target_quantile}"
            )
        if not clip_learning_rate > 0:
            raise InvalidPrivacyParameter(
                f"clip_learning_rate must be > 0, got {clip_learning_rate}"
            )
        self.target_quantile = float(target_quantile)
        self.clip_learning_rate = float(clip_learning_rate)
        self.clipped_count_stddev = float(
            self.noise_multiplier if clipped_count_stddev is None else clipped_count_stddev
        )
        self._update_z = split_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)
        self.max_clipping_norm = (
            None if max_clipping_norm is None else check_clipping_norm(max_clipping_norm)
        )

    @property
    def update_noise_multiplier(self) -> float:
        return self._update_z

    def _adapt(
        self, norm: float, within: int, count: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        noisy = noised_count(within, self.clipped_count_stddev, rng)
        new = adapt_clipping_norm(
            norm,
            noisy_within=noisy,
            count=count,
            target_quantile=self.target_quantile,
            learning_rate=self.clip_learning_rate,
        )
        if self.max_clipping_norm is not None:
            new = min(new, self.max_clipping_norm)
        return new, noisy / count


_ADAPTIVE_DOC = """
    Args:
        strategy: the wrapped strategy (cohort, messages, evaluation).
        noise_multiplier: the *total* ``z`` the accountant uses; the update's own
            multiplier is ``z_Δ = (z^-2 - (2 sigma_b)^-2)^-1/2`` (Andrew et al., Thm. 1).
        initial_clipping_norm: ``C`` of the first round.
        target_quantile: the fraction of updates ``C`` should contain (``gamma``).
        clip_learning_rate: ``eta`` of the geometric update ``C <- C exp(-eta (b - gamma))``.
        clipped_count_stddev: ``sigma_b``, std of the noise on the count of updates
            inside ``C``; must exceed ``z / 2``. Defaults to ``z`` (update noise +15%):
            the paper's ``m / 20`` is far too small for cross-silo cohorts of 3-10 sites.
        max_clipping_norm: an upper bound for ``C`` (sites refuse larger norms).
        sampling_rate, delta, accountant, unsafe_rng, unsafe_release_train_metrics:
            as in :class:`DPFedAvgFixed`.
"""


class DPFedAvgAdaptive(_Adaptive):
    __doc__ = (
        "Central DP-FedAvg with server-side adaptive clipping (Andrew et al. 2021).\n"
        + _ADAPTIVE_DOC
    )

    def _after_release(
        self, server_round: int, total: ClippedSum, within: int, metrics: MetricRecord
    ) -> None:
        self.clipping_norm, fraction = self._adapt(
            total.clipping_norm, within, total.count, noise_rng(self._unsafe_rng)
        )
        metrics["dp-noisy-within-fraction"] = fraction
        metrics["dp-next-clipping-norm"] = self.clipping_norm


class DPFedAvgClientSideAdaptive(_Adaptive, DPFedAvgClientSideFixed):
    __doc__ = (
        "Central DP-FedAvg with site-side adaptive clipping: sites clip with the server's\n"
        "current ``C`` (up to their own maximum) and report whether their update fitted;\n"
        "the server noises the count and adapts ``C`` (Andrew et al. 2021).\n" + _ADAPTIVE_DOC
    )

    def _round_config(self, config: ConfigRecord) -> ConfigRecord:
        config = super()._round_config(config)
        config[keys.REPORT_WITHIN_CLIP] = True
        return config

    def _within_bit(self, reply: Message, deltas: list[npt.NDArray[np.float64]]) -> bool | None:
        super()._within_bit(reply, deltas)
        bits = [
            m[keys.WITHIN_CLIP]
            for m in reply.content.metric_records.values()
            if keys.WITHIN_CLIP in m
        ]
        if len(bits) != 1 or bits[0] not in (0, 1):
            raise InvalidUpdateError(f"reply must report {keys.WITHIN_CLIP!r} as 0 or 1")
        return bool(bits[0])

    def _after_release(
        self, server_round: int, total: ClippedSum, within: int, metrics: MetricRecord
    ) -> None:
        self.clipping_norm, fraction = self._adapt(
            total.clipping_norm, within, total.count, noise_rng(self._unsafe_rng)
        )
        metrics["dp-noisy-within-fraction"] = fraction
        metrics["dp-next-clipping-norm"] = self.clipping_norm
