"""Roles bound in federation certificates, and the kind of principal each denotes.

A role is chosen by the CA at signing time and written into the certificate
(see :mod:`certs.extensions`); it is never taken from the peer's word. This
module only names the roles; :mod:`certs.verify` decides whether a certificate's
role is acceptable for a purpose.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

__all__ = ["CLIENT_ROLES", "DEFAULT_LIFETIME", "Kind", "Role", "parse_role"]


class Kind(StrEnum):
    """What a certificate holder is: a site's SuperNode, a person, or the SuperLink."""

    NODE = "node"
    USER = "user"
    SERVER = "server"


class Role(StrEnum):
    """A role bound in a certificate by the federation CA."""

    NODE = "node"
    DATA_SCIENTIST = "data-scientist"
    AUDITOR = "auditor"
    FEDERATION_ADMIN = "federation-admin"
    SERVER = "server"

    @property
    def kind(self) -> Kind:
        """The kind of principal holding this role."""
        if self is Role.NODE:
            return Kind.NODE
        if self is Role.SERVER:
            return Kind.SERVER
        return Kind.USER


#: Roles a client certificate (CSR signed by ``greenhouse ca sign``) may carry.
CLIENT_ROLES: frozenset[Role] = frozenset(
    {Role.NODE, Role.DATA_SCIENTIST, Role.AUDITOR, Role.FEDERATION_ADMIN}
)

#: Default certificate lifetimes: short, so that renewal is routine.
DEFAULT_LIFETIME: dict[Kind, timedelta] = {
    Kind.NODE: timedelta(days=90),
    Kind.SERVER: timedelta(days=90),
    Kind.USER: timedelta(days=30),
}


def parse_role(text: str) -> Role:
    """Return the :class:`Role` named ``text``.

    Args:
        text: a role name such as ``"node"`` or ``"data-scientist"``.

    Returns:
        The role.

    Raises:
        ValueError: ``text`` names no role.
    """
    try:
        return Role(text)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {text!r} (expected one of {known})") from None
