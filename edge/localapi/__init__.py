"""The gateway's local HTTP API on 127.0.0.1: the public transparency notice and the gateway's status."""

from edge.localapi.app import create_app

__all__ = ["create_app"]
