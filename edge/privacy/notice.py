"""The public transparency notice: DTPR-style JSON from the policy and the gateway config, and its HTML page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from edge.privacy.explain import describe_rule, human_duration, processes
from edge.privacy.policy import Policy
from edge.privacy.rules import kind_of
from edge.protocol.types import Channel
from edge.util.clock import now_ms

__all__ = ["DEFAULT_STORAGE", "NOTICE_SCHEMA", "TECHNOLOGY", "build_notice", "render_notice_html"]

NOTICE_SCHEMA = "ocn-edge/notice/v1"
DEFAULT_STORAGE = (
    "Only what this policy releases is stored: on this gateway until the city's hub confirms it has it, "
    "then on the hub."
)

# What each driver is, in DTPR "technology type" words a passer-by recognises.
TECHNOLOGY = {
    "sds011": "Air quality sensor (particulate matter, laser scattering)",
    "pms5003": "Air quality sensor (particulate matter, laser scattering)",
    "nmea-gps": "Satellite positioning receiver (GNSS)",
    "pedestrian-counter": "Wi-Fi / Bluetooth device counter (detects phones' radio signals)",
    "modbus": "Meter or environmental sensor (wired, Modbus)",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("edge.privacy", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def build_notice(
    policy: Policy,
    config: Any,
    *,
    channels: Sequence[Channel] | None = None,
    generated_ms: int | None = None,
) -> dict[str, Any]:
    """The machine-readable notice (DTPR taxonomy) for one gateway.

    ``config`` needs only ``config.gateway.id``, ``.site``, ``.latitude``, ``.longitude``
    and ``config.devices``, each with ``.name`` and ``.driver`` (``edge.config.GatewayConfig``
    has them).  ``channels`` are the channels the drivers declare; without them the
    notice lists the policy's rules by pattern.
    """
    gateway = config.gateway
    devices = list(getattr(config, "devices", ()) or ())
    data: list[dict[str, Any]] = []
    all_processes: set[str] = set()
    if channels is not None:
        for channel in channels:
            rule = policy.rule_for(channel.id)
            if rule is None or not kind_of(rule).releases:
                continue
            labels = processes(rule)
            all_processes.update(labels)
            data.append(
                {
                    "channel": channel.id,
                    "device": channel.id.rsplit("/", 1)[0],
                    # drivers' notes to engineers come in parentheses; the public sees the name
                    "what": channel.description.split(" (")[0] or channel.id.rsplit("/", 1)[-1],
                    "unit": channel.unit,
                    "personal": channel.personal,
                    "process": labels,
                    "leaves_as": describe_rule(rule, policy, channel.unit),
                    "purpose": rule.purpose or policy.purpose,
                }
            )
        withheld = [c.id for c in channels if (r := policy.rule_for(c.id)) is None or not kind_of(r).releases]
    else:
        for rule in sorted(policy.rules, key=lambda r: r.pattern):
            if not kind_of(rule).releases:
                continue
            labels = processes(rule)
            all_processes.update(labels)
            data.append(
                {
                    "channel": rule.pattern,
                    "device": rule.pattern.rsplit("/", 1)[0],
                    "process": labels,
                    "leaves_as": describe_rule(rule, policy),
                    "purpose": rule.purpose or policy.purpose,
                }
            )
        withheld = [r.pattern for r in policy.rules if not kind_of(r).releases]
    return {
        "schema": NOTICE_SCHEMA,
        "generated_ms": generated_ms if generated_ms is not None else now_ms(),
        "place": {
            "gateway_id": gateway.id,
            "site": getattr(gateway, "site", ""),
            "latitude": getattr(gateway, "latitude", None),
            "longitude": getattr(gateway, "longitude", None),
        },
        "accountable": {"organisation": policy.organisation, "contact": policy.contact},
        "purpose": policy.purpose,
        "technology": [
            {
                "device": d.name,
                "driver": d.driver,
                "type": TECHNOLOGY.get(d.driver, "Sensor"),
            }
            for d in devices
        ],
        "data": data,
        "withheld": withheld,
        "default": "Anything the policy does not name never leaves the device and is never stored.",
        "process": sorted(all_processes),
        "retention": policy.retention or "Not stated in the policy.",
        "storage": policy.storage or DEFAULT_STORAGE,
        "access": policy.access or "Not stated in the policy.",
        "pseudonym_key_rotation": human_duration(policy.rotate_ms),
        "privacy_budget": (
            {"epsilon": policy.budget.epsilon, "period": human_duration(policy.budget.period_ms)} if policy.budget else None
        ),
        "policy": {
            "name": policy.name,
            "version": policy.version,
            "digest": policy.digest.hex(),
            "signed_by": policy.signed_by,
        },
    }


def render_notice_html(notice: Mapping[str, Any]) -> str:
    """The plain-language, accessible HTML page of a notice (no scripts, no external resources)."""
    return _env.get_template("notice.html").render(n=notice)
