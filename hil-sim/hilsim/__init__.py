"""hil-sim: simulated municipal sensors, buses and faults for development, tests and the demo."""

from hilsim.netproxy import ProxyStep, UplinkProxy
from hilsim.scenario import (
    Endpoint,
    Scenario,
    ScenarioError,
    Simulation,
    available_scenarios,
    load_scenario,
    run_scenario,
)

__all__ = [
    "Endpoint",
    "ProxyStep",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "UplinkProxy",
    "available_scenarios",
    "load_scenario",
    "run_scenario",
]
