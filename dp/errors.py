"""The exceptions of the ``dp`` package, under one root: :class:`DPError`.

Bad input (a nonsense privacy parameter, an update that cannot be clipped), caller
misuse (committing to a run that holds no reservation) and refusals that protect a
site (a plan over budget, a server asking for a larger clipping norm than the site
allows) are kept apart, so callers can tell "fix your parameters" from "the site
said no". Messages carry the numbers involved, never array values.
"""

from __future__ import annotations

__all__ = [
    "AccountingError",
    "BudgetExceeded",
    "ClippingNormRefused",
    "DPError",
    "InvalidPrivacyParameter",
    "InvalidUpdateError",
    "LedgerError",
    "LedgerStateError",
    "NoBudget",
    "StorageError",
]


class DPError(Exception):
    """Root of every error raised by the ``dp`` package."""


class InvalidPrivacyParameter(DPError, ValueError):
    """A privacy parameter is out of range (negative noise, delta >= 1, q outside (0, 1])."""


class AccountingError(DPError):
    """The accountant cannot compute a bound for this mechanism or combination of inputs."""


class InvalidUpdateError(DPError):
    """An update cannot be clipped or noised (wrong shapes or dtypes, NaN or infinite values)."""


class ClippingNormRefused(DPError):
    """The server asked a site to clip with a norm above the site's own maximum.

    Attributes:
        requested: the clipping norm the server sent.
        site_maximum: the largest norm the site accepts.
    """

    def __init__(self, requested: float, site_maximum: float) -> None:
        super().__init__(
            f"server asked for clipping norm {requested:g}, above this site's maximum "
            f"{site_maximum:g}; the update was not computed"
        )
        self.requested = requested
        self.site_maximum = site_maximum


class LedgerError(DPError):
    """Root of the privacy-budget ledger's errors."""


class BudgetExceeded(LedgerError):
    """A plan or reservation would take a dataset over one of its privacy-budget caps.

    Attributes:
        dataset: the dataset key the budget belongs to.
        unit: the privacy unit (``site-level`` or ``record-level``).
        cap: which cap refused (``per-run`` or ``total``).
        requested: the epsilon asked for.
        spent: the epsilon already spent or reserved (0 for the per-run cap).
        limit: the cap's value.
    """

    def __init__(
        self, *, dataset: str, unit: str, cap: str, requested: float, spent: float, limit: float
    ) -> None:
        if cap == "per-run":
            detail = f"planned epsilon {requested:.4g} exceeds max_epsilon_per_run {limit:.4g}"
        else:
            detail = (
                f"planned epsilon {requested:.4g} + already spent or reserved {spent:.4g} = "
                f"{requested + spent:.4g} exceeds max_epsilon_total {limit:.4g}"
            )
        super().__init__(f"dataset {dataset!r} ({unit}): {detail}")
        self.dataset = dataset
        self.unit = unit
        self.cap = cap
        self.requested = requested
        self.spent = spent
        self.limit = limit


class NoBudget(LedgerError):
    """The dataset has no budget for this privacy unit: nothing may be spent on it."""


class LedgerStateError(LedgerError):
    """Caller misuse of the ledger (no reservation for the run, spend going backwards...)."""


class StorageError(LedgerError):
    """The ledger's database could not be reached, locked or written."""
