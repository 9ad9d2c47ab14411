"""Site-side DP mods: client-side clipping (for server or SecAgg+ noise) and local DP.

Both wrap a ClientApp's ``train`` handlers (``ClientApp(mods=[...])``, or a site
policy's mods) and leave other message types alone. Each copies the global model it
received before the handler runs, so a handler that edits arrays in place cannot
shift the reference the update is measured from.

* :class:`ClientSideClippingMod` clips the update (new model minus global model) to
  a norm the *site* controls: the server's requested norm is accepted only when it
  is at most the mod's ``max_clipping_norm``; a larger request is refused with
  :class:`~dp.errors.ClippingNormRefused` before the handler touches any data
  (Flower's mod clips with whatever norm the server sends).
* :class:`LocalDPMod` clips and adds Gaussian noise calibrated by the analytic
  Gaussian mechanism (Balle & Wang 2018) for a per-round (epsilon, delta); the
  sensitivity is ``2C``, derived from the clipping norm, never a separate knob. The
  reply reports the site's cumulative spend over the run: ``T`` Gaussian releases
  compose exactly into one Gaussian with ``sqrt(T)`` times less noise (Dong, Roth,
  Su 2019), evaluated with the same analytic bound.
"""

from __future__ import annotations

import math

import numpy as np
from dp_accounting import get_epsilon_gaussian

from appliance.clientapp import CallNext
from appliance.context import Context
from appliance.message import Message, MessageType
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from dp import keys
from dp.clipping import check_clipping_norm, clip_update, model_delta
from dp.errors import ClippingNormRefused, InvalidPrivacyParameter, InvalidUpdateError
from dp.mechanisms import local_dp_noise_std, local_dp_release
from dp.rng import noise_rng, warn_if_unsafe
from dp.spend import PrivacySpend, PrivacyUnit, check_delta, check_epsilon

__all__ = ["ClientSideClippingMod", "LocalDPMod"]

_LOCAL_STATE = "dp.local-dp"


def _is_train(msg: Message) -> bool:
    kind = msg.metadata.message_type.split(".", 1)[0]
    return kind == MessageType.TRAIN.value and msg.has_content()


def _global_model(msg: Message, key: str) -> ArrayRecord:
    record = msg.content.get(key)
    if not isinstance(record, ArrayRecord):
        raise InvalidUpdateError(
            f"train message has no ArrayRecord {key!r} to measure updates from"
        )
    return ArrayRecord({name: array.copy() for name, array in record.items()})


def _with_update(
    request: Message, reply: Message, key: str, arrays: ArrayRecord, extra: dict[str, float]
) -> Message:
    """A new reply to ``request``: ``reply``'s content with the arrays replaced and ``extra``
    metrics added (to its first MetricRecord, or a new one named ``metrics``)."""
    content = RecordDict(reply.content.items())
    content[key] = arrays
    metrics_key = next(iter(content.metric_records), "metrics")
    metrics = MetricRecord(content.get(metrics_key, MetricRecord()).items())
    metrics.update(extra)
    content[metrics_key] = metrics
    return Message(content, reply_to=request)


class ClientSideClippingMod:
    """Clip each training update to a norm the site accepts.

    Args:
        max_clipping_norm: the largest norm this site accepts from the server.
        clipping_norm: the norm used when the server sends none (defaults to the maximum).
        arrayrecord_key: where the model travels in the message and the reply.
        configrecord_key: where the round's config travels in the message.

    Raises:
        InvalidPrivacyParameter: a norm is not finite and > 0, or ``clipping_norm``
            exceeds ``max_clipping_norm``.
    """

    def __init__(
        self,
        *,
        max_clipping_norm: float,
        clipping_norm: float | None = None,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
    ) -> None:
        self.max_clipping_norm = check_clipping_norm(max_clipping_norm, "max_clipping_norm")
        own = self.max_clipping_norm if clipping_norm is None else clipping_norm
        self.clipping_norm = check_clipping_norm(own)
        if self.clipping_norm > self.max_clipping_norm:
            raise InvalidPrivacyParameter(
                f"clipping_norm {self.clipping_norm:g} exceeds max_clipping_norm "
                f"{self.max_clipping_norm:g}"
            )
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key

    def norm_for(self, config: ConfigRecord | None) -> float:
        """The norm to clip with, given the round's config.

        Raises:
            ClippingNormRefused: the server asked for more than ``max_clipping_norm``.
            InvalidPrivacyParameter: the server's value is not a finite number > 0.
        """
        if config is None or keys.CLIPPING_NORM not in config:
            return self.clipping_norm
        requested = check_clipping_norm(config[keys.CLIPPING_NORM], "server clipping norm")
        if requested > self.max_clipping_norm:
            raise ClippingNormRefused(requested, self.max_clipping_norm)
        return requested

    def __call__(self, msg: Message, ctx: Context, call_next: CallNext) -> Message:
        """Clip the reply's update; refuse before training if the server's norm is too large."""
        if not _is_train(msg):
            return call_next(msg, ctx)
        config = msg.content.get(self.configrecord_key)
        norm = self.norm_for(config if isinstance(config, ConfigRecord) else None)
        report = bool(isinstance(config, ConfigRecord) and config.get(keys.REPORT_WITHIN_CLIP))
        reference = _global_model(msg, self.arrayrecord_key)
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        update = reply.content.get(self.arrayrecord_key)
        if not isinstance(update, ArrayRecord):
            raise InvalidUpdateError(f"reply has no ArrayRecord {self.arrayrecord_key!r}")
        result = clip_update(update, reference, norm)
        extra = {keys.CLIPPING_NORM: norm, keys.UNIT_WEIGHT: 1}
        if report:
            extra[keys.WITHIN_CLIP] = 0.0 if result.clipped else 1.0
        return _with_update(msg, reply, self.arrayrecord_key, result.arrays, extra)


class LocalDPMod:
    """Clip each training update and add Gaussian noise for (epsilon, delta) local DP per round.

    Args:
        clipping_norm: ``C``; the Gaussian's sensitivity is ``2C``.
        epsilon: per-round epsilon, > 0.
        delta: per-round delta, in (0, 1).
        arrayrecord_key: where the model travels in the message and the reply.
        unsafe_rng: a seeded generator for reproducible tests (logged as a warning);
            by default every update's noise comes from a fresh OS-seeded generator.

    Raises:
        InvalidPrivacyParameter: a parameter is out of range.
    """

    def __init__(
        self,
        *,
        clipping_norm: float,
        epsilon: float,
        delta: float,
        arrayrecord_key: str = "arrays",
        unsafe_rng: np.random.Generator | None = None,
    ) -> None:
        self.clipping_norm = check_clipping_norm(clipping_norm)
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta, allow_zero=False)
        #: Per-coordinate noise std (validates epsilon > 0 as well).
        self.noise_std = local_dp_noise_std(
            clipping_norm=self.clipping_norm, epsilon=self.epsilon, delta=self.delta
        )
        self.arrayrecord_key = arrayrecord_key
        self._unsafe_rng = unsafe_rng
        warn_if_unsafe(unsafe_rng, owner="LocalDPMod")

    def run_spend(self, releases: int) -> PrivacySpend:
        """The site's cumulative spend after ``releases`` noised updates in one run."""
        unit_sigma = self.noise_std / (2 * self.clipping_norm)
        eps = float(get_epsilon_gaussian(unit_sigma / math.sqrt(max(releases, 1)), self.delta))
        return PrivacySpend(
            epsilon=eps if releases else 0.0, delta=self.delta, unit=PrivacyUnit.SITE
        )

    def __call__(self, msg: Message, ctx: Context, call_next: CallNext) -> Message:
        """Clip and noise the reply's update; report the run's cumulative spend."""
        if not _is_train(msg):
            return call_next(msg, ctx)
        reference = _global_model(msg, self.arrayrecord_key)
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        update = reply.content.get(self.arrayrecord_key)
        if not isinstance(update, ArrayRecord):
            raise InvalidUpdateError(f"reply has no ArrayRecord {self.arrayrecord_key!r}")
        clipped = clip_update(update, reference, self.clipping_norm)
        deltas = model_delta(clipped.arrays, reference)
        local_dp_release(
            deltas,
            clipping_norm=self.clipping_norm,
            epsilon=self.epsilon,
            delta=self.delta,
            rng=noise_rng(self._unsafe_rng),
        )
        noised = ArrayRecord(
            {
                name: (ref + d).astype(ref.dtype)
                for (name, ref), d in zip(reference.items(), deltas, strict=True)
            }
        )
        releases = _count_release(ctx)
        extra = {**self.run_spend(releases).to_metrics(), keys.LOCAL_RELEASES: releases}
        return _with_update(msg, reply, self.arrayrecord_key, noised, extra)


def _count_release(ctx: Context) -> int:
    """Increment and return this run's number of local-DP releases (kept in ``ctx.state``)."""
    record = ctx.state.get(_LOCAL_STATE)
    count = int(record["releases"]) if isinstance(record, MetricRecord) else 0
    count += 1
    ctx.state[_LOCAL_STATE] = MetricRecord({"releases": count})
    return count
