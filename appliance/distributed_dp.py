"""Distributed DP under SecAgg+: each site adds its own Skellam noise share.

The glue between two libraries that do not know each other: :mod:`dp.distributed`
(clip, scale, round, Skellam shares, accounting) and :mod:`secagg` (integer rounds).

* Site side, :class:`SkellamEncoder`: the SecAgg+ mod's
  :class:`~secagg.IntegerEncoder`. Before the app trains it checks the round against
  the run's DP plan (``dp-mode = "distributed"`` in the run config) and the site's
  policy; after, it clips the update to the plan's norm, scales it, rounds it to
  integers within the sensitivity bound and adds this site's noise share, drawn from
  a fresh OS-seeded generator. Only the noised integers are masked.
* Server side, :func:`distributed_secagg`: the :class:`~secagg.SecAggPlus` whose
  integer rounds match the plan (scale, modulus wide enough for the noisy sum, no
  unmasking with fewer surviving shares than the plan sized them for).

The SuperLink and every site account the plan with
:func:`dp.distributed.planned_skellam_spend` (see :class:`dp.plan.DPPlan`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from appliance.context import Context
from appliance.logs import get_logger
from secagg import ParameterError, PolicyRefused, RoundConfig, SecAggPlus

if TYPE_CHECKING:
    from dp.distributed import SkellamPlan
    from dp.plan import DPPlan

__all__ = ["SkellamEncoder", "distributed_secagg"]

_log = get_logger("appliance.distributed_dp")
#: Scales agree when they differ by less than this, relatively (they travel as floats).
_SCALE_TOLERANCE = 1e-12


def _plan(run_config: Mapping[str, Any]) -> DPPlan | None:
    from dp.errors import DPError  # dp imports take ~1 s: load on first use
    from dp.plan import DPPlan

    try:
        return DPPlan.from_run_config(run_config)
    except DPError as exc:
        raise PolicyRefused(f"the run's DP plan is invalid: {exc}") from None


def _is_distributed(plan: DPPlan | None) -> bool:
    from dp.plan import PlanMode

    return plan is not None and plan.mode is PlanMode.DISTRIBUTED


def _skellam_plan(plan: DPPlan, *, dimension: int, sites: int) -> SkellamPlan:
    from dp.distributed import SkellamPlan

    return SkellamPlan(
        clipping_norm=plan.clipping_norm,
        scale=plan.scale,
        dimension=dimension,
        noise_multiplier=plan.noise_multiplier,
        expected_sites=max(sites, plan.min_surviving_sites),
        min_surviving_sites=plan.min_surviving_sites,
    )


class SkellamEncoder:
    """A site's distributed-DP encoder for SecAgg+ integer rounds.

    Args:
        required: the site trains only under distributed DP (``require_dp =
            "distributed"``); runs without such a plan are refused.
        max_clipping_norm: the largest clipping norm the site accepts (its
            ``clip_norm``), or ``None``.
        unsafe_rng: a seeded generator for tests (reproducible noise; logged).
    """

    def __init__(
        self,
        *,
        required: bool = False,
        max_clipping_norm: float | None = None,
        unsafe_rng: np.random.Generator | None = None,
    ) -> None:
        self._required = required
        self._max_clipping_norm = max_clipping_norm
        self._unsafe_rng = unsafe_rng
        if unsafe_rng is not None:  # dp loads lazily (about a second): only when needed
            from dp.rng import warn_if_unsafe

            warn_if_unsafe(unsafe_rng, owner="SkellamEncoder")

    def __repr__(self) -> str:
        return (
            f"SkellamEncoder(required={self._required}, "
            f"max_clipping_norm={self._max_clipping_norm})"
        )

    def check(self, config: RoundConfig, context: Context) -> None:
        """Refuse a round that does not carry out the run's distributed-DP plan.

        Raises:
            PolicyRefused: the site requires distributed DP and the run declares
                none; the plan is distributed but the round is not an integer round
                at the plan's scale; the round could unmask fewer shares than the
                plan sized them for; or the clipping norm is above the site's cap.
        """
        if not (self._required or config.integer_inputs or context.run_config.get("dp-mode")):
            return  # no DP in sight: a plain fixed-point round
        plan = _plan(context.run_config)
        if not _is_distributed(plan):
            if self._required:
                raise PolicyRefused(
                    "this site trains only under distributed DP; the run declares no "
                    "dp-mode = 'distributed' plan"
                )
            if config.integer_inputs:
                raise PolicyRefused("an integer round, but the run declares no distributed DP")
            return
        assert plan is not None
        if not config.integer_inputs:
            raise PolicyRefused(
                "the run's plan is distributed DP; the server proposed a fixed-point round "
                "(no noise shares)"
            )
        if not math.isclose(config.integer_scale, plan.scale, rel_tol=_SCALE_TOLERANCE):
            raise PolicyRefused(
                f"the round's integer scale {config.integer_scale:g} is not the plan's "
                f"dp-scale {plan.scale:g}"
            )
        if config.min_participants < plan.min_surviving_sites:
            raise PolicyRefused(
                f"the round may unmask a sum of {config.min_participants} sites; the plan's "
                f"noise needs at least dp-min-surviving-sites = {plan.min_surviving_sites}"
            )
        cap = self._max_clipping_norm
        if cap is not None and plan.clipping_norm > cap:
            raise PolicyRefused(
                f"the plan's dp-clipping-norm {plan.clipping_norm:g} is above this site's "
                f"clip_norm {cap:g}"
            )

    def encode(
        self, update: npt.NDArray[np.float64], config: RoundConfig, context: Context
    ) -> npt.NDArray[np.int64]:
        """Clip, scale and round ``update``, then add this site's Skellam share.

        Raises:
            ParameterError: the update cannot be encoded (wrong size, not finite).
        """
        from dp.distributed import add_noise_share, quantize
        from dp.errors import DPError
        from dp.rng import noise_rng

        plan = _plan(context.run_config)
        assert plan is not None  # check() ran first
        skellam = _skellam_plan(plan, dimension=config.num_values, sites=config.invited)
        try:
            rng = noise_rng(self._unsafe_rng)
            integers = quantize([update], skellam, rng)
            return add_noise_share(integers, skellam, rng)
        except DPError as exc:
            raise ParameterError(f"distributed DP: {exc}") from None


def _distributed_plan(run_config: Mapping[str, Any]) -> DPPlan:
    from dp.errors import InvalidPrivacyParameter
    from dp.plan import DPPlan

    plan = DPPlan.from_run_config(run_config)
    if plan is None or not _is_distributed(plan):
        raise InvalidPrivacyParameter("the run config declares no dp-mode = 'distributed' plan")
    return plan


def _modulus_bits(plan: DPPlan, *, dimension: int, sites: int) -> int:
    from dp.distributed import required_modulus_bits

    needed = required_modulus_bits(_skellam_plan(plan, dimension=dimension, sites=sites))
    for bits in (32, 64):
        if needed <= bits:
            return bits
    raise ValueError(f"the noisy sum needs {needed} bits; lower dp-scale")


def modulus_bits(run_config: Mapping[str, Any], *, dimension: int, sites: int) -> int:
    """32 or 64: the SecAgg+ modulus under which the noisy sum of ``sites`` cannot wrap.

    Raises:
        dp.InvalidPrivacyParameter: the run declares no distributed plan.
        ValueError: not even 64 bits hold it.
    """
    return _modulus_bits(_distributed_plan(run_config), dimension=dimension, sites=sites)


def distributed_secagg(
    run_config: Mapping[str, Any], *, dimension: int, sites: int, **options: Any
) -> SecAggPlus:
    """The SecAgg+ workflow whose integer rounds carry out the run's distributed plan.

    Args:
        run_config: the run's config, with ``dp-mode = "distributed"``.
        dimension: values in the model (the update's length).
        sites: the most sites a round invites (sizes the modulus).
        options: other :class:`~secagg.SecAggPlus` settings (``dropout_fraction``…);
            ``min_participants`` is raised to the plan's ``dp-min-surviving-sites``.

    Raises:
        dp.InvalidPrivacyParameter: no distributed plan, or an invalid one.
        ValueError: the noisy sum does not fit in 64 bits.
    """
    plan = _distributed_plan(run_config)
    bits = _modulus_bits(plan, dimension=dimension, sites=sites)
    options["min_participants"] = max(
        int(options.get("min_participants", 3)), plan.min_surviving_sites
    )
    _log.info(
        "distributed DP rounds",
        scale=plan.scale,
        modulus_bits=bits,
        min_surviving_sites=plan.min_surviving_sites,
    )
    return SecAggPlus(integer_scale=plan.scale, integer_modulus_bits=bits, **options)
