"""`ocn-edge read` and `scan` through the running gateway's local API, when that gateway holds the port.

The running gateway's bus owner has the port (exclusively); asking it to read or scan never
fights it for the line.  Its port record (edge.portlock) says where its local API listens.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from edge.portlock import PortRecord, held_message

__all__ = ["TOKEN_ENV", "Refused", "Unreachable", "api_off", "default_token", "post", "ranges", "through_line"]

TOKEN_ENV = "OCN_EDGE_TOKEN"


class Unreachable(Exception):
    """The gateway's local API did not answer; the message says where and why."""


class Refused(Exception):
    """The gateway's local API answered with a refusal; the message is its detail, with what to do."""


def through_line(holder: PortRecord) -> str:
    """The one line that says a command went through the running gateway."""
    who = f"{holder.unit}, pid {holder.pid}" if holder.unit else f"pid {holder.pid}"
    return f"through the running gateway ({who})"


def api_off(holder: PortRecord) -> str:
    """What to do when the gateway holding the port has no local API to go through."""
    return (f"{held_message(holder)}; to read or scan through it, turn its local API on "
            "([local_api] enabled = true in its gateway.toml, listen = \"127.0.0.1:8080\"), then restart it")


def post(holder: PortRecord, path: str, body: Mapping[str, Any], *, token: str, timeout: float) -> dict[str, Any]:
    """POST ``body`` as JSON to ``path`` on the holder's local API; its JSON answer, or Unreachable / Refused."""
    assert holder.local_page is not None
    url = urllib.parse.urljoin(holder.local_page, path)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            document = json.load(answer)
    except urllib.error.HTTPError as exc:
        from edge.util.linkwords import printable

        try:
            detail = printable(str(json.loads(exc.read() or b"{}").get("detail", "")))
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            detail = ""
        if exc.code == 401:
            raise Refused(f"the running gateway's local API needs its access token: --token TOKEN or ${TOKEN_ENV} "
                          f"(`ocn-edge access-token create` makes one){'; ' + detail if detail else ''}") from None
        raise Refused(f"the running gateway answered {exc.code}: {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        from edge.util.linkwords import url_problem

        reason = url_problem(exc, "its local API")
        raise Unreachable(f"its local API ({holder.local_page}) does not answer ({reason})") from None
    except (ValueError, http.client.HTTPException):  # not JSON, not UTF-8, cut off
        raise Unreachable(f"its local API ({holder.local_page}) answered something other than a whole JSON document") from None
    if not isinstance(document, dict):
        raise Unreachable(f"its local API ({holder.local_page}) answered something other than a JSON object")
    return document


def default_token() -> str:
    return os.environ.get(TOKEN_ENV, "")


def ranges(ids: Iterable[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7': unit ids as the scan request spells them."""
    out: list[str] = []
    run: list[int] = []
    for unit in sorted(ids):
        if run and unit == run[-1] + 1:
            run.append(unit)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [unit]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)
