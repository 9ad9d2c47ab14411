"""The config and metric keys DP mods and DP strategies exchange (one vocabulary).

Server to site (in the round's ``ConfigRecord``):

* :data:`CLIPPING_NORM` -- the clipping norm the server's noise is calibrated to.
  A site's :class:`~dp.mods.ClientSideClippingMod` accepts it only up to its own maximum.
* :data:`REPORT_WITHIN_CLIP` -- ask the site to report whether its update fitted
  inside the norm (adaptive clipping, client-side variant).

Site to server (in the reply's metrics): :data:`WITHIN_CLIP` (0 or 1),
:data:`UNIT_WEIGHT` (always 1: under SecAgg+ each site's clipped update weighs the
same, so one site moves the sum by at most ``C``), and the
site's own privacy spend as ``dp-epsilon-<unit>`` / ``dp-delta-<unit>``
(:meth:`dp.spend.PrivacySpend.to_metrics`).
"""

from __future__ import annotations

__all__ = [
    "CLIPPING_NORM",
    "LOCAL_RELEASES",
    "NOISE_MULTIPLIER",
    "NOISE_STD",
    "REPORT_WITHIN_CLIP",
    "SITES_AGGREGATED",
    "UNIT_WEIGHT",
    "WITHIN_CLIP",
]

CLIPPING_NORM = "dp-clipping-norm"
REPORT_WITHIN_CLIP = "dp-report-within-clip"
WITHIN_CLIP = "dp-within-clip"
LOCAL_RELEASES = "dp-local-releases"
NOISE_MULTIPLIER = "dp-noise-multiplier"
NOISE_STD = "dp-noise-std"
SITES_AGGREGATED = "dp-sites-aggregated"
UNIT_WEIGHT = "dp-unit-weight"
