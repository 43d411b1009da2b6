"""The checks a desired document passes before anything else happens to it, shared by the hub and the gateway.

The hub runs them when city IT sets a document (``ocn-edge hub desired set``, the admin API) and
refuses what fails; the gateway runs the same functions first when a document arrives.  So a
mistake is refused at the hub with the very sentence the gateway would have logged, instead of
surfacing on every gateway minutes later.

What only the gateway can know is left to it: a desired config is a set of tables laid over the
gateway's own file, so keys the overlay leaves out, files it names (paths are on the gateway) and
rules that join the overlay with the local file (a device's bus defined locally, a policy that
must fit the running devices' channels) are checked on the gateway.  Everything inside the
overlay itself — unknown keys, values of the wrong kind, whole ``[[buses]]``/``[[devices]]``
entries and their driver options — is checked here, with the gateway's own config schema and
policy parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.config import gateway_schema
from edge.privacy import Policy, PolicyError, parse_policy
from edge.schema import Context, FilePath, Table, dumps_toml, join

__all__ = ["FIXED_KEYS", "DesiredCheckError", "check_desired_config", "check_desired_policy"]

# What a desired config may not change: the gateway's identity, where its keys and spool live, and who must sign
# its policy (else a hub could lift privacy.require_signed and send a policy of its own in the same document).
FIXED_KEYS = (("gateway", "id"), ("gateway", "state_dir"), ("uplink", "key"), ("privacy", "require_signed"), ("privacy", "governance_key"))

# The file name problems in a desired policy are reported under, on the hub and on the gateway alike.
POLICY_SOURCE = "desired-policy.toml"
CONFIG_SOURCE = "desired config"


class DesiredCheckError(ValueError):
    """A desired document the gateway would refuse; the message is the one line the gateway reports."""


def check_desired_config(overlay: Mapping[str, Any]) -> None:
    """Raise DesiredCheckError unless every table and entry in ``overlay`` fits the gateway's config schema."""
    for table, key in FIXED_KEYS:
        part = overlay.get(table)
        if isinstance(part, Mapping) and key in part:
            raise DesiredCheckError(f"a desired config may not change {table}.{key} (the gateway's identity, its keys and who signs its policy stay local)")
    schema = gateway_schema()
    # Paths are resolved on the gateway, so no file is looked for here (FilePath is only type-checked below).
    ctx = Context(source=CONFIG_SOURCE, base_dir=Path("/"))
    for name, raw in overlay.items():
        spec = schema.fields.get(name)
        if spec is None:
            ctx.unknown(name, name, schema.fields)
        elif isinstance(spec.type, Table) and isinstance(raw, Mapping):
            _check_partial_table(spec.type, raw, ctx, name)
        else:
            # An array of [[buses]] or [[devices]] replaces the local one whole: each entry is checked whole.
            spec.type.convert(raw, ctx, name)
    if ctx.problems:
        raise DesiredCheckError("; ".join(ctx.problems))  # each problem starts "desired config: <key>"


def _check_partial_table(table: Table, raw: Mapping[str, Any], ctx: Context, path: str) -> None:
    """The keys ``raw`` sets, each against its field; keys it leaves out keep the gateway's own values."""
    for key, value in raw.items():
        where = join(path, key)
        spec = table.fields.get(key)
        if spec is None:
            ctx.unknown(where, key, table.fields)
        elif isinstance(spec.type, FilePath):
            if not isinstance(value, str) or "\0" in value:
                ctx.invalid(where, value, spec.type.expected)
        else:
            spec.type.convert(value, ctx, where)


def check_desired_policy(policy: Mapping[str, Any]) -> tuple[Policy, str]:
    """The desired policy parsed as the gateway parses it, and its TOML text; DesiredCheckError if it is invalid."""
    try:
        text = dumps_toml(policy)
        return parse_policy(text, path=POLICY_SOURCE), text
    except PolicyError as exc:
        raise DesiredCheckError("desired policy: " + "; ".join(exc.problems)) from None
    except (TypeError, ValueError) as exc:  # a JSON null or a value TOML has no form for
        raise DesiredCheckError(f"desired policy: cannot be written as a TOML policy file: {exc}") from None
