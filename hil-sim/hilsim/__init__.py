"""hil-sim: simulated municipal sensors, buses and faults for development, tests and the demo."""
