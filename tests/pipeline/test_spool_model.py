"""Under any sequence of puts, acks, quarantines, quota drops and crashes, the spool behaves like a simple queue."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge import spool as spool_module
from edge.protocol import generate_keypair
from edge.spool import Spool, StoredBatch
from tests.pipeline.conftest import seal_readings

KEY = generate_keypair()


class SpoolModel(RuleBasedStateMachine):
    """The model: a list of (epoch, seq, readings) in arrival order, a loss count, and acks not yet committed."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "spool.db"
        self.spool = self._open()
        self.queue: list[tuple[int, int, int, int]] = []  # (epoch, seq, readings, size)
        self.uncommitted: list[tuple[int, int, int, int]] = []  # acked, DELETE not yet committed
        self.leased: tuple[int, int, StoredBatch] | None = None  # (epoch, seq, batch)
        self.held_quarantine: list[int] = []  # sizes of quarantined batches still kept (they count against the quota)
        self.dropped = 0
        self.quarantined = 0

    def _open(self) -> Spool:
        spool = Spool.open_blocking(self.path, max_bytes=6000)
        spool.begin_boot_blocking()
        return spool

    def _committed(self) -> None:
        self.uncommitted.clear()

    def _leased(self) -> tuple[int, int, StoredBatch]:
        assert self.leased is not None, "only rules with the precondition that a batch is leased ask"
        return self.leased

    @rule(readings=st.integers(min_value=1, max_value=300))
    def put(self, readings: int) -> None:
        data = seal_readings(KEY, self.spool, readings)
        stored = self.spool.put(data, readings=readings)
        self._committed()
        if stored is None:
            self.dropped += readings
            return
        entry = (stored.id.boot_epoch, stored.id.seq, readings, len(data))
        # drop_oldest: quarantined batches go first, then the oldest waiting one, never the leased one.
        while sum(e[3] for e in self.queue) + sum(self.held_quarantine) + len(data) > self.spool.max_bytes:
            if self.held_quarantine:
                self.held_quarantine.pop(0)
                continue
            victim = next(e for e in self.queue if self.leased is None or e[:2] != self.leased[:2])
            self.queue.remove(victim)
            self.dropped += victim[2]
        self.queue.append(entry)

    @precondition(lambda self: self.leased is None)
    @rule()
    def lease(self) -> None:
        batch = self.spool.lease_oldest()
        if self.queue:
            assert batch is not None
            assert (batch.id.boot_epoch, batch.id.seq) == self.queue[0][:2]
            self.leased = (batch.id.boot_epoch, batch.id.seq, batch)
        else:
            assert batch is None

    @precondition(lambda self: self.leased is not None)
    @rule()
    def ack(self) -> None:
        leased = self._leased()
        entry = next(e for e in self.queue if e[:2] == leased[:2])
        assert self.spool.ack(leased[2]) is True
        self.queue.remove(entry)
        self.uncommitted.append(entry)
        if len(self.uncommitted) >= spool_module.ACK_GROUP:
            self._committed()
        self.leased = None

    @precondition(lambda self: self.leased is not None)
    @rule()
    def quarantine(self) -> None:
        leased = self._leased()
        entry = next(e for e in self.queue if e[:2] == leased[:2])
        self.spool.quarantine(leased[2], reason="malformed", detail="test")
        self._committed()
        self.queue.remove(entry)
        self.held_quarantine.append(entry[3])
        self.quarantined += entry[2]
        self.leased = None

    @precondition(lambda self: self.leased is not None)
    @rule()
    def release(self) -> None:
        self.spool.release(self._leased()[2])
        self.leased = None

    @rule()
    def crash_and_restart(self) -> None:
        self.spool._conn.close()  # no flush, no clean shutdown: what kill -9 leaves
        self.spool = self._open()
        # Acks whose DELETE was not committed come back, in their original place; sending them again is safe.
        self.queue = sorted(self.queue + self.uncommitted, key=lambda e: e[:2])
        self.uncommitted = []
        self.leased = None

    @invariant()
    def the_spool_holds_exactly_the_model_queue_in_order(self) -> None:
        held = [(b.id.boot_epoch, b.id.seq, b.readings, len(b.data)) for b in self.spool.oldest(1000)]
        assert held == self.queue
        stats = self.spool.stats()
        assert stats["batches"] == len(self.queue)
        assert stats["readings"] == sum(e[2] for e in self.queue)
        assert [len(b.data) for b, _, _ in self.spool.quarantined()] == self.held_quarantine
        assert stats["bytes"] + sum(self.held_quarantine) <= self.spool.max_bytes
        assert stats["readings_dropped"] == self.dropped
        assert stats["readings_quarantined"] == self.quarantined

    def teardown(self) -> None:
        self.spool.close_blocking()
        assert Spool.open_blocking(self.path, max_bytes=6000).check() == []
        self.dir.cleanup()


@pytest.fixture(autouse=True)
def no_time_based_ack_commits(monkeypatch):
    monkeypatch.setattr(spool_module, "ACK_DELAY_S", 3600.0)


SpoolModel.TestCase.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)
test_the_spool_behaves_like_a_queue_under_any_sequence_of_operations = SpoolModel.TestCase
