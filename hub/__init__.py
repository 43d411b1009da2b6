"""The city-run hub: enrolment, verified ingest, storage, fleet and open-data APIs.

Run it with ``ocn-edge hub`` (see docs/fleet.md), or in-process with :func:`run_hub`::

    async with run_hub(listen="127.0.0.1:0", state_dir=tmp, admin_token="secret") as hub:
        token = await hub.create_token()
        ...
        print((await hub.counters("pole-0042"))["readings_stored"])
"""

from hub.app import RunningHub, run_hub

__all__ = ["RunningHub", "run_hub"]
