"""Imports flow one way between packages, and no package's modules import each other in a ring.

    edge.protocol, edge.util   import nothing of ours outside themselves (drivers, gateway, hub and tools build on them)
    drivers                    import only drivers, edge.protocol and edge.util (never the runtime, the config or the uplink)
    hub                        imports of edge only the protocol, util, privacy and shared process plumbing (HUB_MAY_IMPORT),
                               never the gateway's runtime, uplink, transport, desired-state applier or local API
    edge, drivers              never import hub
    bench, tests               may import anything

Read from the source with ``ast`` (tests/guardrails/imports.py); an import deferred into a function
counts like any other.
"""

from __future__ import annotations

import pytest

from tests.guardrails.imports import collapse, cycles, import_graph

GRAPH = import_graph()


def _inside(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _violations(importer: tuple[str, ...], allowed: tuple[str, ...] = (), forbidden: tuple[str, ...] = ()) -> list[str]:
    """``module -> import`` for each import of a module in ``importer`` that is not allowed or is forbidden."""
    found = []
    for module, targets in sorted(GRAPH.items()):
        if not _inside(module, *importer):
            continue
        for target in sorted(targets):
            if (allowed and not _inside(target, *allowed)) or (forbidden and _inside(target, *forbidden)):
                found.append(f"{module} -> {target}")
    return found


def _explain(violations: list[str], rule: str) -> str:
    return f"{rule}; these imports break it:\n  " + "\n  ".join(violations)


def test_the_graph_holds_every_import_and_the_ring_finder_finds_rings() -> None:
    # A reader that found nothing, or a finder that found no ring, would pass every test below.
    assert "drivers.sdk" in GRAPH["drivers.registry"]
    assert len(GRAPH) > 200
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e", "d"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["edge.protocol", "edge.util"])
def test_the_shared_foundations_import_nothing_of_ours_outside_themselves(package: str) -> None:
    violations = _violations((package,), allowed=(package,))
    assert not violations, _explain(violations, f"{package} imports nothing of ours outside itself")


def test_drivers_import_only_drivers_the_protocol_and_util() -> None:
    violations = _violations(("drivers",), allowed=("drivers", "edge.protocol", "edge.util"))
    assert not violations, _explain(violations, "drivers import only drivers, edge.protocol and edge.util")


# What the hub may take from edge: the protocol, the shared mechanisms, the privacy rules it explains,
# the checks of a desired document it shares with the gateway (edge.desiredcheck),
# and the process plumbing both commands share (command-line helpers, logging, systemd notify,
# private files), and the checks of a release bundle it keeps for gateways (edge.update.manifest, and the release key
# rollovers that lead to its key: edge.update.rollover).
# Never the gateway's pipeline: runtime, uplink, transport, desired state, local API.
HUB_MAY_IMPORT = ("hub", "edge.protocol", "edge.util", "edge.privacy", "edge.desiredcheck", "edge.commands", "edge.logs", "edge.notify",
                  "edge.private", "edge.update.manifest", "edge.update.rollover")


def test_the_hub_never_imports_the_gateway_runtime() -> None:
    violations = _violations(("hub",), allowed=HUB_MAY_IMPORT)
    violations += _violations(("hub",), forbidden=("edge.runtime", "edge.uplink", "edge.transport", "edge.desired", "edge.localapi"))
    rule = "hub imports only hub and " + ", ".join(HUB_MAY_IMPORT[1:]) + " (never the runtime, uplink, transport, desired state or local API)"
    assert not violations, _explain(sorted(set(violations)), rule)


def test_nothing_the_hub_imports_brings_the_gateway_runtime_in() -> None:
    # An allowed module that imported the pipeline would bring it into every hub process.
    pipeline = ("edge.runtime", "edge.flow", "edge.service", "edge.devices", "edge.uplink", "edge.transport", "edge.desired",
                "edge.localapi", "edge.batcher", "edge.spool")
    reached: dict[str, str] = {}  # module -> the module that first imported it
    stack = [m for m in GRAPH if _inside(m, "hub")]
    while stack:
        module = stack.pop()
        for target in GRAPH.get(module, ()):
            if target not in reached and not _inside(target, "hub"):
                reached[target] = module
                stack.append(target)
    found = []
    for target in sorted(t for t in reached if _inside(t, *pipeline)):
        chain = [target]
        while not _inside(chain[-1], "hub"):
            chain.append(reached[chain[-1]])
        found.append(" <- ".join(chain))
    assert not found, _explain(found, "no module the hub imports, directly or not, is the gateway's pipeline")


# The one exception, on purpose: `ocn-edge demo` runs simulated devices, a gateway and a hub together on
# loopback, so it stands above both. Nothing else in edge may import the hub.
DEMO_IMPORTS_HUB = {"edge.demo -> hub.app"}


def test_neither_gateway_nor_drivers_import_the_hub() -> None:
    violations = [v for v in _violations(("edge", "drivers"), forbidden=("hub",)) if v not in DEMO_IMPORTS_HUB]
    assert not violations, _explain(violations, "nothing in edge or drivers imports hub (but the demo, which runs one)")


PACKAGES = sorted({"edge", "hub"} | {m for m in GRAPH if _inside(m, "edge", "hub") and m.count(".") == 1 and any(
    other.startswith(m + ".") for other in GRAPH)})


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_among_the_modules_of(package: str) -> None:
    """The modules directly in ``package`` (a subpackage counts as one) import each other without a ring."""
    edges: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        source = collapse(module, package)
        if source is None:
            continue
        edges.setdefault(source, set())
        for target in targets:
            child = collapse(target, package)
            if child is not None and child != source:
                edges[source].add(child)
    rings = cycles(edges)
    shown = []
    for ring in rings:
        links = [f"{a} -> {b}" for a in ring for b in sorted(edges[a]) if b in ring]
        shown.append(", ".join(ring) + "\n      " + "; ".join(links))
    assert not rings, f"modules of {package} that import each other in a ring:\n  " + "\n  ".join(shown)
