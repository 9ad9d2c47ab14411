"""SecAgg+'s exceptions, under one root so the library can be used on its own.

- :class:`ProtocolViolation`: a peer (a client, or the server as seen by a client)
  broke a protocol rule; carries ``node_id`` (``0`` is the server) and ``stage``.
  :class:`MalformedMessage` beneath it: a message that does not even parse.
- :class:`TooManyDropouts`: fewer participants survived than the round tolerates.
- :class:`RoundStateError`: caller misuse (a method called in the wrong stage).
- :class:`PolicyRefused`: the round does not meet this site's own policy (minimum
  cohort, assumed corruption); a refusal, not a fault.
- :class:`ParameterError`: round parameters that cannot be safe or correct (for
  example a modulus that could wrap, or a threshold below the security bound).

Messages name the stage, the peer, what was expected and what was found; never
keys, shares, masks or plaintext values.
"""

from __future__ import annotations

__all__ = [
    "MalformedMessage",
    "ParameterError",
    "PolicyRefused",
    "ProtocolViolation",
    "RoundStateError",
    "SecAggError",
    "TooManyDropouts",
]


class SecAggError(Exception):
    """Root of every error raised by :mod:`secagg`."""


class ProtocolViolation(SecAggError):
    """A peer broke a protocol rule.

    Attributes:
        node_id: the peer at fault (``0`` stands for the server), or ``None`` when
            the fault cannot be attributed to one peer.
        stage: the protocol stage (a :class:`secagg.Stage` value) where it happened.
    """

    def __init__(self, message: str, *, node_id: int | None, stage: str) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.stage = stage


class MalformedMessage(ProtocolViolation):
    """A message does not parse or breaks a size, type or range rule."""

    def __init__(self, message: str, *, node_id: int | None = None, stage: str = "") -> None:
        super().__init__(message, node_id=node_id, stage=stage)


class TooManyDropouts(SecAggError):
    """Too few participants survived a stage: the sum cannot be recovered safely."""


class RoundStateError(SecAggError):
    """A round object was used out of order (caller misuse, not a peer's fault)."""


class ParameterError(SecAggError, ValueError):
    """Round parameters that are unsafe or cannot be correct; the message says why."""


class PolicyRefused(SecAggError):
    """The round does not meet this site's policy (e.g. its cohort is below the minimum)."""
