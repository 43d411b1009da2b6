"""The gateway's local HTTP API on 127.0.0.1: the public transparency notice and the gateway's status."""

from edge.localapi.app import create_app
from edge.localapi.server import LocalApi, LocalApiError

__all__ = ["LocalApi", "LocalApiError", "create_app"]
