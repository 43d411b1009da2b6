"""`ocn-edge status` (the technician's page in a terminal, read from the running gateway's local API) and `ocn-edge access-token create`."""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from edge.commands import CommandError

__all__ = ["register"]

DEFAULT_CONFIG = "/etc/ocn-edge/gateway.toml"
TOKEN_ENV = "OCN_EDGE_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="show the running gateway's devices, live values, buses and uplink (what its local page shows)",
        description=(
            "Ask the running gateway's local API ([local_api] listen in the config) for what its "
            "technician's page shows: identity, uptime, hub connection, spool backlog, each device's "
            "health with its diagnosis and live values, bus statistics. When the local API listens "
            f"beyond 127.0.0.1 it needs the access token: --token or ${TOKEN_ENV}."
        ),
    )
    status.add_argument("--config", default=DEFAULT_CONFIG, help="the gateway's config, to find its local API (default: %(default)s)")
    status.add_argument("--url", type=_local_api_url, help="the local API's address instead, e.g. http://127.0.0.1:8080")
    status.add_argument("--token", default=os.environ.get(TOKEN_ENV, ""), help=f"the local API's access token (default: ${TOKEN_ENV})")
    status.add_argument("--json", action="store_true", help="print the page's document as JSON")
    status.set_defaults(func=_status)

    token = sub.add_parser(
        "access-token",
        help="the local API's access token, needed when it listens beyond 127.0.0.1 (a phone on the pole's network)",
        description="Manage the token the local API asks for when [local_api] listen is not a loopback address.",
    )
    actions = token.add_subparsers(title="actions", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="make a new token (replacing any earlier one) and print it once",
        description=(
            "Make a new access token for the local API and print it once, with a login link for a "
            "phone. Only its SHA-256 is kept, in the state directory; the earlier token stops working "
            "at once, no restart needed."
        ),
    )
    create.add_argument("--config", default=DEFAULT_CONFIG, help="the gateway's config, for its state directory (default: %(default)s)")
    create.set_defaults(func=_create_token)


def _local_api_url(text: str) -> str:
    """An argparse type: an http:// URL with a host (the local API speaks plain HTTP)."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r}: expected the local API's address, e.g. http://127.0.0.1:8080")
    return text.rstrip("/")


def _config(path: str) -> Any:
    from edge.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CommandError("\n".join(exc.problems)) from None


def _base_url(config: Any) -> str:
    listen = config.local_api.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
    return f"http://[{host}]:{listen.port}" if ":" in host else f"http://{host}:{listen.port}"


def _status(args: argparse.Namespace) -> int:
    if args.url:
        base = args.url
    else:
        config = _config(args.config)
        if not config.local_api.enabled:
            raise CommandError(f"{args.config}: [local_api] enabled = false, so the running gateway has no page to ask; set it to true and restart")
        base = _base_url(config)
    request = urllib.request.Request(f"{base}/technician.json", headers={"Authorization": f"Bearer {args.token}"} if args.token else {})
    not_a_gateway = f"{base}: what answers there is not a gateway's local API ({{}}); is this the gateway's address?"
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            view = json.load(answer)
    except urllib.error.HTTPError as exc:
        from edge.util.linkwords import printable

        try:
            detail = printable(str(json.loads(exc.read() or b"{}").get("detail", ""))) if exc.headers.get_content_type() == "application/json" else ""
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            detail = ""
        raise CommandError(f"{base}: the gateway answered {exc.code}{': ' + detail if detail else ''}", status=1) from None
    except (urllib.error.URLError, OSError) as exc:
        from edge.util.linkwords import url_problem

        reason = url_problem(exc, "the gateway")
        raise CommandError(f"{base}: no gateway answers there ({reason}); is `ocn-edge run` running (systemctl status ocn-edge)?", status=1) from None
    except http.client.HTTPException:
        raise CommandError(not_a_gateway.format("its answer was cut off or is not HTTP"), status=1) from None
    except ValueError:  # not JSON, or not UTF-8
        raise CommandError(not_a_gateway.format("/technician.json is not JSON"), status=1) from None
    if args.json:
        if not isinstance(view, dict):
            raise CommandError(not_a_gateway.format("/technician.json is not a JSON object"), status=1)
        print(json.dumps(view, indent=1, ensure_ascii=False))
        return 0
    try:
        text = render(view)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise CommandError(not_a_gateway.format("/technician.json lacks the page's fields"), status=1) from None
    sys.stdout.write(text)
    return 0


def _create_token(args: argparse.Namespace) -> int:
    from edge.localapi.access import TOKEN_FILE, create_access_token, needs_token

    config = _config(args.config)
    token = create_access_token(config.gateway.state_dir)
    listen = config.local_api.listen
    print(token)
    print(f"kept as a SHA-256 in {config.gateway.state_dir / TOKEN_FILE}; shown this once", file=sys.stderr)
    print(f"on a phone: http://<this gateway's address>:{listen.port}/technician?token={token}", file=sys.stderr)
    if not needs_token(listen.host):
        print(f"note: [local_api] listen = {str(listen)!r} is loopback only, where no token is asked; "
              "set it to 0.0.0.0:8080 (or this gateway's LAN address) to reach the page from a phone", file=sys.stderr)
    return 0


def _ago(ms: int | None) -> str:
    if not ms:
        return "never"
    stamp = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    seconds = max(0, round(datetime.datetime.now(datetime.UTC).timestamp() - ms / 1000))
    return f"{stamp:%H:%M:%S} UTC ({seconds} s ago)"


def _value(item: Mapping[str, Any]) -> str:
    return f"{item['name']}={item['value']}{' ' + item['unit'] if item.get('unit') else ''}"


def render(view: Mapping[str, Any]) -> str:
    """The page's document as lines for a terminal."""
    o = view["overview"]
    hub = o.get("hub")
    lines = [
        f"gateway {o['device_id']}  ocn-edge {o['software_version']}  up {round(o['uptime_s'])} s  boot epoch {o['boot_epoch']}",
        "hub      " + ("none configured" if not hub else
                       f"{hub['url']} {'reachable' if hub['reachable'] else 'UNREACHABLE'}, last ack {_ago(hub['last_ack_ms'])}"
                       + (f"; {hub['last_error']}" if hub["last_error"] and not hub["reachable"] else "")),
        f"spool    {o['spool']['batches']} batches, {o['spool']['bytes']} bytes waiting"
        + (f", oldest {round(o['spool']['oldest_age_s'])} s" if o["spool"].get("oldest_age_s") else ""),
        f"readings {o['readings_read']} read, {o['readings_released']} released, {o['readings_lost']} lost",
        "",
        "devices",
    ]
    for d in view["devices"]:
        where = f"{d['driver']}{' on ' + d['bus'] if d.get('bus') else ''}"
        lines.append(f"  {d['name']:<12} {d['health']:<9} {where}, last reading {_ago(d['last_reading_ms'])}")
        if d.get("diagnosis"):
            lines.append(f"    {d['diagnosis']}")
        if d.get("next_step"):
            lines.append(f"    next: {d['next_step']}")
        if d["values"]:
            lines.append("    " + "  ".join(_value(v) for v in d["values"]))
    lines += ["", "buses"]
    for b in view["buses"]:
        counts = ", ".join(f"{k} {b[k]}" for k in ("requests", "timeouts", "crc_errors", "exceptions", "losses") if k in b)
        lines.append(f"  {b['name']:<14} {b.get('type', ''):<11} {'open' if b.get('open') else 'CLOSED'}  {counts}")
    return "\n".join(lines) + "\n"
