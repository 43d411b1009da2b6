"""People at the hub: accounts, their roles and what each role may do.

Roles (docs/fleet.md, "Accounts and roles"):

- ``viewer``: reads the dashboard, the admin API and the audit log;
- ``operator``: also approves and revokes gateways, creates enrolment tokens and sets or clears desired *config*;
- ``privacy-officer``: the only role that may set or clear a desired *policy* (and reads like a viewer);
- ``admin``: manages accounts and does what an operator does, but changes a policy only if the account is also
  a ``privacy-officer``: accounts hold a set of roles, so a city that wants one person for both gives both.

The admin token (``--admin-token``) is the break-glass credential: it acts as the built-in account
``admin``, which holds every role, and its use shows in the audit log under that name.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BUILT_IN_ADMIN", "ROLES", "Account", "AccountError", "NotPermitted", "Permission", "check_name", "parse_roles", "role_text"]

BUILT_IN_ADMIN = "admin"
ROLES = ("viewer", "operator", "privacy-officer", "admin")
RESERVED = frozenset({BUILT_IN_ADMIN, "hub", "cli"})
NAME_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")


class AccountError(ValueError):
    """An account name or role is not acceptable, or the account does not exist; the message says what is accepted."""


class NotPermitted(Exception):
    """A change the acting account's roles do not allow; the message says which role it needs."""

    def __init__(self, permission: Permission, what: str) -> None:
        super().__init__(f"{what}: {permission.describe()}")
        self.permission = permission


class Permission(enum.Enum):
    """What a request needs; ``granted_by`` lists the roles that give it."""

    READ = ("viewer", "operator", "privacy-officer", "admin")
    OPERATE = ("operator", "admin")
    POLICY = ("privacy-officer",)
    ACCOUNTS = ("admin",)

    @property
    def granted_by(self) -> tuple[str, ...]:
        return self.value

    def describe(self) -> str:
        what = {"READ": "read the dashboard", "OPERATE": "approve and revoke gateways, create enrolment tokens and change desired config",
                "POLICY": "change or clear a desired policy", "ACCOUNTS": "manage accounts"}[self.name]
        return f"to {what} an account needs the role {' or '.join(self.granted_by)}"


@dataclass(frozen=True, slots=True)
class Account:
    """A person's account as stored (its API token only as a hash, never kept here)."""

    name: str
    roles: frozenset[str]
    disabled: bool
    created_ms: int
    updated_ms: int

    def may(self, permission: Permission) -> bool:
        return not self.disabled and any(role in self.roles for role in permission.granted_by)


def check_name(name: str) -> str:
    """An account name: 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter; not a reserved name."""
    if not NAME_RE.match(name):
        raise AccountError(f"account name {name[:80]!r}: expected 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter")
    if name in RESERVED:
        raise AccountError(f"account name {name!r} is reserved ({', '.join(sorted(RESERVED))}: the admin token, the hub itself "
                           "and command-line users appear under these names in the audit log)")
    return name


def parse_roles(text: str | Iterable[str]) -> frozenset[str]:
    """Roles given as ``operator,privacy-officer`` (or a list of such texts); each must be one of ROLES."""
    parts = [p.strip() for item in ([text] if isinstance(text, str) else text) for p in item.split(",")]
    roles = frozenset(p for p in parts if p)
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        shown = ", ".join(map(repr, unknown)) if unknown else "none"
        raise AccountError(f"role {shown}: expected one or more of {', '.join(ROLES)} (comma-separated)")
    return roles


def role_text(roles: Iterable[str]) -> str:
    """Roles as stored and shown: in the order of ROLES, comma-separated."""
    given = set(roles)
    return ",".join(r for r in ROLES if r in given)
