"""Device drivers for OCN Edge and the SDK integrators use to write their own.

A driver package registers its driver class under the entry-point group
``ocn_edge.drivers``; the gateway core finds drivers only through
:func:`drivers.registry.load_driver` and never imports one by name.
"""

from drivers.sdk import DeviceContext, Driver, DriverError, Emit, Emitter, Manifest, OptionError, OptionSpec, emit_all_of

__all__ = ["DeviceContext", "Driver", "DriverError", "Emit", "Emitter", "Manifest", "OptionError", "OptionSpec", "emit_all_of"]
