"""One version apart, a gateway and a hub still interoperate (the house rule; OXP §13): this tree's gateway against a hub
of an older commit, and that commit's gateway against this tree's hub, over HTTP and over MQTT through a real Mosquitto;
every reading is stored exactly once.

The older side is the commit before the MQTT binding's newest additive change (OLD: before the compact batch ack and
topic aliases, OXP §8.6), so the skew the binding promises is exercised both ways: an old hub echoes a new gateway's 4
bytes of correlation data and answers in JSON; a new hub answers an old gateway's 8 bytes in JSON.  The old tree is
taken from the repository's own history (``git archive``; nothing is written to the repository); a clone without
that history skips, or fails under OCN_REQUIRE_ALL=1.  Each side runs as a process of its own from its tree.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.brokerauth import device_acls
from tests.helpers.tools import missing
from tests.mqtt.conftest import HUB_USER, Broker

OLD = "5250a38d7b89f7bd1b9b75bcb5c61e4995957348"  # e965b06^, the parent of "OXP over MQTT: the compact batch ack ..."
ROOT = Path(__file__).resolve().parents[2]
GATEWAY = Path(__file__).with_name("skew_gateway.py")
BATCHES = 6


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        missing("needs git and this repository's history for the older commit")
    assert git is not None
    if subprocess.run([git, "-C", str(ROOT), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True).returncode != 0:
        missing(f"needs commit {OLD[:12]} in this clone's history (a shallow clone lacks it: git fetch --unshallow)")
    # The drivers and hil-sim with them, as a release ships them together: an older edge beside this tree's drivers could
    # miss what they import from edge (edge.util.lazy, since fbe1fd5), and the older CLI imports hil-sim's to build its parser.
    archive = subprocess.run([git, "-C", str(ROOT), "archive", "--format=tar", OLD, "edge", "hub", "drivers", "hil-sim"],
                             capture_output=True, check=True).stdout
    tree = tmp_path_factory.mktemp("oxp-old")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    # The skew is real: the older hub knows no compact ack, and a process started as these tests start it imports from it.
    assert "compact" not in (tree / "hub" / "mqtt.py").read_text()
    for module in ("hub.mqtt", "drivers.buses", "hilsim.cli"):
        found = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__file__)"], cwd=tree, env=_env(tree),
                               capture_output=True, text=True, check=True).stdout.strip()
        assert Path(found).resolve().is_relative_to(tree.resolve()), found
    return tree


def _env(tree: Path) -> dict[str, str]:
    """The environment of a process that imports from ``tree`` first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "hil-sim")])}


async def _hub(tree: Path, broker: Broker, state: Path) -> tuple[asyncio.subprocess.Process, str, list[bytes]]:
    """``ocn-edge hub`` of ``tree`` taking HTTP and MQTT; its process, URL and what it wrote to stderr (read on, so it never blocks)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "hub", "--listen", "127.0.0.1:0", "--db", f"sqlite:///{state}/hub.db", "--state-dir", str(state),
        "--admin-token", "t", "--log-level", "warning", "--mqtt-broker", f"mqtt://{HUB_USER}@127.0.0.1:{broker.port}",
        "--mqtt-password-file", str(broker.hub_password_file), "--mqtt-client-id", f"hub-{state.name}",
        cwd=tree, env=_env(tree), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    said: list[bytes] = []
    async with asyncio.timeout(30):
        while (match := re.search(rb"OCN hub serving on (http://\S+)", line := await proc.stderr.readline())) is None:
            if not line:
                raise AssertionError(f"hub of {tree} exited with {await proc.wait()}: {b''.join(said).decode(errors='replace')}")
            said.append(line)

    async def drain(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            said.append(line)

    asyncio.get_running_loop().create_task(drain(proc.stderr))
    return proc, match.group(1).decode(), said


async def _gateway(tree: Path, url: str, token: str, device_id: str, directory: Path, broker: str = "") -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(GATEWAY), url, token, device_id, str(directory), str(BATCHES), *([broker] if broker else []),
        cwd=directory.parent, env=_env(tree), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def _stored(database: Path) -> dict[str, tuple[int, int, int]]:
    """Per device: (batches stored, readings the device row counts, readings held in chunks), read from the hub's database."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT d.device_id, d.batches_stored, d.readings_stored, coalesce(sum(c.count), 0) FROM devices d"
            " LEFT JOIN channels ch ON ch.device_id = d.device_id LEFT JOIN chunks c ON c.channel_id = ch.id GROUP BY d.device_id"
        ).fetchall()
    return {device: (batches, readings, held) for device, batches, readings, held in rows}


def _grant_answer_topic(broker: Broker, device_id: str) -> None:
    """Make the device's role before the older hub does, with the answer topic of OXP §8.6's answers by name in it (as a
    hand-kept ACL, or a newer hub process sharing the broker, would): the older hub keeps the role it finds."""
    ctrl = shutil.which("mosquitto_ctrl")
    assert ctrl is not None
    login = [ctrl, "-h", "127.0.0.1", "-p", str(broker.port), "-u", HUB_USER, "-P", broker.hub_password_file.read_text().strip(), "dynsec"]
    role = f"oxp-device-{device_id}"
    subprocess.run([*login, "createRole", role], check=True, capture_output=True)
    for acl in device_acls(device_id):  # this tree's: the older hub's rights and the answer topic
        subprocess.run([*login, "addRoleACL", role, acl["acltype"], acl["topic"], "allow"], check=True, capture_output=True)


@pytest.mark.parametrize("hub_side, gateway_side, by_name", [("old", "current", False), ("current", "old", False), ("old", "current", True)])
async def test_a_gateway_and_a_hub_one_version_apart_store_every_reading_once_over_http_and_over_mqtt(
    broker: Broker, tmp_path: Path, old_tree: Path, hub_side: str, gateway_side: str, by_name: bool
) -> None:
    """``by_name``: the broker grants this tree's gateway its answer topic although the older hub does not answer by name,
    so the gateway sends batches without correlation data, gets JSON without it, and falls back to correlation data."""
    trees = {"old": old_tree, "current": ROOT}
    state = tmp_path / f"hub-{hub_side}"
    if by_name:
        _grant_answer_topic(broker, "skew-mqtt")
    token = subprocess.run(
        [sys.executable, "-m", "edge.cli", "hub", "token", "create", "--db", f"sqlite:///{state}/hub.db", "--state-dir", str(state), "--uses", "2",
         "--approve"], cwd=trees[hub_side], env=_env(trees[hub_side]), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    proc, url, said = await _hub(trees[hub_side], broker, state)
    try:
        acked = await asyncio.gather(
            _gateway(trees[gateway_side], url, token, "skew-http", tmp_path / "gw-http"),
            _gateway(trees[gateway_side], url, token, "skew-mqtt", tmp_path / "gw-mqtt", broker=broker.url),
        )
    finally:
        proc.terminate()
        await proc.wait()
    assert [a["acked"] for a in acked] == [BATCHES, BATCHES], said
    assert {Path(str(a["source"])) for a in acked} == {trees[gateway_side].resolve()}
    per_batch = 20  # tests/mqtt/skew_gateway.py's READINGS
    assert _stored(state / "hub.db") == {device: (BATCHES, BATCHES * per_batch, BATCHES * per_batch) for device in ("skew-http", "skew-mqtt")}



# The older tree's own code, fed what this hub sends: its DesiredState verifies a dated document, and its applier, given
# the signed clear with the ETag "", goes back to the local policy. Argument: a JSON list [config, state dir, hub key PEM,
# [signed, etag] of the document, signed clear].
OLD_GATEWAY = """
import asyncio, json, sys
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from edge.config import load_config
from edge.desired import DesiredApplier, DesiredState, local_policy
from edge.privacy import parse_policy

config_path, state_dir, pem, (signed, etag), clear = json.loads(sys.stdin.read())
key = load_pem_public_key(pem.encode())
config = load_config(config_path)
state = DesiredState(state_dir, device_id="pole-1")
state.pin_hub_key(pem.encode())
change = state.verify(signed, etag, key)


class Pipeline:
    stopped = False

    def __init__(self, policy):
        self.config, self.policy, self.tasks = config, policy, []

    def check_policy(self, policy):
        pass

    def swap_policy(self, policy):
        self.policy = policy

    def keep_until_stop(self, task):
        self.tasks.append(task)


class Hub:  # the HubKeySource of the older tree's applier; the key is pinned already, so it is not asked
    async def fetch_hub_key(self):
        raise AssertionError("the hub key is pinned")


async def main():
    from edge.schema import dumps_toml
    hub_policy = parse_policy(dumps_toml(change.policy))
    state.record_success(change, policy_toml=dumps_toml(change.policy))
    pipeline = Pipeline(hub_policy)
    applier = DesiredApplier(pipeline, state=state, base_config=config, request_reload=None, hub=Hub())
    applier.on_desired(clear, "")
    await asyncio.gather(*pipeline.tasks)
    print(json.dumps({"etag": change.etag, "hub_policy": hub_policy.digest.hex(), "applied": state.applied_etag,
                      "running": pipeline.policy.digest.hex(), "local": local_policy(config).digest.hex(), "error": state.last_error}))

asyncio.run(main())
"""


def test_the_older_gateway_takes_a_document_this_hub_dated_and_its_signed_clear(old_tree: Path, tmp_path: Path) -> None:
    """OXP §8.4's date is an added field and the signed clear travels with the ETag "": a gateway from before them verifies
    and applies the dated document as before, and takes the signed clear as the clear it knew."""
    from edge.protocol.hubtrust import pem
    from hub.hubkey import DesiredSigner

    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "gateway.toml").write_text(f'[gateway]\nid = "pole-1"\nstate_dir = "{tmp_path}/state"\n\n[uplink]\nhub = "http://127.0.0.1:9"\n'
                                           f'key = "{tmp_path}/state/device.key"\n\n[privacy]\npolicy = "policy.toml"\n')
    key = Ed25519PrivateKey.generate()
    signer = DesiredSigner(None, key)
    hub_policy = tomllib.loads(POLICY.replace('version = "1"', 'version = "2"').replace('rule = "keep"', 'rule = "quantize"\nstep = 5.0'))
    signed = signer.sign({"device_id": "pole-1", "fleet": "default", "policy": hub_policy, "etag": "e1"})
    assert "issued_ms" in signed["document"]
    argument = [str(tmp_path / "gateway.toml"), str(tmp_path / "state"), pem(key.public_key()).decode(), [signed, "e1"], signer.sign_clear("pole-1")]
    run = subprocess.run([sys.executable, "-c", OLD_GATEWAY], input=json.dumps(argument), cwd=old_tree, env=_env(old_tree),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert (seen["etag"], seen["applied"], seen["error"]) == ("e1", "", "")
    assert seen["running"] == seen["local"] != seen["hub_policy"], "back on its local policy"


POLICY = """
[policy]
name = "t"
version = "1"
organisation = "Test city"
contact = "it@test.example"
purpose = "testing version skew"
retention = "none"

[channels."m-1/*"]
rule = "keep"
purpose = "energy"
"""
