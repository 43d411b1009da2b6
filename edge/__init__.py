"""OCN Edge: the gateway runtime that reads sensors, applies the city's policy and syncs batches."""

__version__ = "0.1.0"
