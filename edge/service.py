"""`ocn-edge run` in one process: one pipeline at a time, replaced in place when the hub's desired config asks, stopped on a signal.

The pipeline started is the local config with the hub's last applied desired state laid
over it (`edge.desired.last_applied`).  A new desired config stops the running pipeline
(memory flushed to the spool) and starts one for the new config; if that one does not
start, the last good one starts again and the failure is reported upstream.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from edge.config import GatewayConfig
from edge.desired import DesiredState, Reload, is_older, last_applied
from edge.enrol import EnrolError
from edge.logs import apply_levels
from edge.notify import Notifier
from edge.portlock import remove_record, write_record
from edge.privacy import Policy, PolicyError
from edge.runtime import Gateway, StartError
from edge.spool import SpoolError
from edge.transport import UplinkError
from edge.util.loading import Hold, hold_back

__all__ = ["StartError", "run_gateway"]

log = logging.getLogger("ocn.runtime")

# How long modules needed only once the gateway runs wait for its first reading (edge.util.loading) when none comes:
# a gateway whose devices do not answer still serves its local API and reaches its hub.
_LOADS_WAIT_AT_MOST_S = 2.0
_FIRST_READING_LOOK_S = 0.02

MakeGateway = Callable[[GatewayConfig, Policy | None], Gateway]


async def run_gateway(
    config: GatewayConfig,
    *,
    stop: asyncio.Event | None = None,
    started: Callable[[Gateway], None] | None = None,
    loaded: Callable[[], None] | None = None,
    notifier: Notifier | None = None,
) -> Gateway:
    """Run until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly. Returns the stopped gateway.

    ``started`` is called when a pipeline has started; ``loaded`` once the modules held back until
    the first reading (edge.util.loading) have loaded.

    ``config`` is the local file's config.  If a pipeline task dies, the gateway stops
    cleanly and ``gateway.fatal`` is set (exit non-zero).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = notifier or Notifier()
    desired = DesiredState(config.gateway.state_dir, device_id=config.gateway.id)
    reloads: asyncio.Queue[Reload] = asyncio.Queue()
    running_config, policy = last_applied(config, desired)
    new, local = running_config.gateway, config.gateway
    if (new.log_level, new.log_levels) != (local.log_level, local.log_levels):  # the hub's config in force again
        apply_levels(new.log_level, new.log_levels)

    def make(cfg: GatewayConfig, pol: Policy | None, *, fallback: bool = False) -> Gateway:
        return Gateway(
            cfg, policy=pol, desired=desired, base_config=config, request_reload=reloads.put_nowait,
            notifier=notifier, fallback_to_local_policy=fallback,
        )

    gateway = make(running_config, policy, fallback=policy is not None)
    record: list[Path] = []
    held = hold_back()
    loads: asyncio.Task[None] | None = None
    try:
        try:
            await gateway.start()
        except (PolicyError, EnrolError, SpoolError, UplinkError) as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(_os_problem(exc)) from None
        record = write_record(gateway.config, local_page=gateway.local_page)
        if started is not None:
            started(gateway)
        loads = asyncio.create_task(_release_after_first_reading(gateway, held, then=loaded), name="loads after the first reading")
        while True:
            waits = {
                asyncio.ensure_future(stop.wait()): "stop",
                asyncio.ensure_future(gateway.fatal.wait()): "fatal",
                asyncio.ensure_future(reloads.get()): "reload",
            }
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for fut in pending:
                fut.cancel()
            outcome = {waits[f]: f for f in done}
            if "stop" in outcome or "fatal" in outcome:
                break
            request = outcome["reload"].result()
            assert isinstance(request, Reload)
            if is_older(request.change, desired):
                # Queued behind a newer document's reload, which is in force now: an older document never overtakes it (OXP §8.4).
                log.info("a queued desired config is older than the one now in force: not applied", extra={"etag": request.change.etag or "(local)"})
                if gateway.applier is not None:
                    gateway.applier.forget_reload(request.change.etag)
                continue
            gateway = await _reload(gateway, request, make, desired)
            remove_record(record)  # the new config may name other ports
            record = write_record(gateway.config, local_page=gateway.local_page)
            if started is not None:
                started(gateway)
    finally:
        if loads is not None:
            loads.cancel()
        held.release(load=False)
        await gateway.stop()
        remove_record(record)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        notifier.close()
    return gateway


async def _release_after_first_reading(gateway: Gateway, held: Hold, *, then: Callable[[], None] | None) -> None:
    """Load what was held back at start (edge.util.loading) once the first reading is in, or after a while without one; then ``then``."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + _LOADS_WAIT_AT_MOST_S
    while gateway.counters.readings_read == 0 and loop.time() < give_up:
        await asyncio.sleep(_FIRST_READING_LOOK_S)
    held.release()
    if then is not None:
        then()


def _os_problem(exc: OSError) -> str:
    """A file the gateway could not create or open at start, as one line with the path and the fix."""
    where = f"{exc.filename}: " if exc.filename else ""
    if isinstance(exc, PermissionError):
        return (f"{where}permission denied ({exc.strerror}); give the gateway's user (ocn-edge) access to it, "
                "or point gateway.state_dir at a directory it may write")
    return f"{where}{exc.strerror or exc}"


async def _reload(gateway: Gateway, request: Reload, make: MakeGateway, desired: DesiredState) -> Gateway:
    """Replace the running pipeline with one for ``request``; on failure bring the last good one back."""
    log.info("applying the hub's desired config: restarting the pipeline", extra={"etag": request.change.etag or "(local)"})
    await gateway.stop(reloading=True)
    candidate = make(request.config, request.policy)
    try:
        await candidate.start()
    except Exception as exc:  # noqa: BLE001 - whatever broke, the last good config comes back
        await candidate.stop(reloading=True)
        desired.record_failure(request.change.etag, f"the new config did not start: {exc}")
        previous = make(gateway.config, gateway.policy)
        try:
            await previous.start()
        except BaseException:
            # Not even the last good pipeline starts: close what it opened (spool, local API)
            # before the error ends the gateway, so the spool is not taken for a crash.
            await previous.stop(reloading=True)
            raise
        return previous
    desired.record_success(request.change, policy_toml=request.policy_toml)
    new, old = request.config.gateway, gateway.config.gateway
    if (new.log_level, new.log_levels) != (old.log_level, old.log_levels):
        apply_levels(new.log_level, new.log_levels)
    return candidate
