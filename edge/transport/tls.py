"""The client TLS context every connection to the hub uses (uplink, enrolment): the configured CA or the system store."""

from __future__ import annotations

import ssl
from pathlib import Path

from edge.transport.contract import UplinkError
from edge.util.linkwords import ca_bundle_problem

__all__ = ["tls_context"]


def tls_context(ca: str | Path | None) -> ssl.SSLContext:
    """A client TLS context that trusts only ``ca`` (a PEM bundle), or the system store when None."""
    if ca is None or str(ca) == "":
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"uplink ca = {str(ca)!r}: cannot read a PEM CA bundle there ({ca_bundle_problem(exc)})") from None
