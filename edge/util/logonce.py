"""Log a fault once when it starts and once when it ends, not on every poll that sees it.

A sensor that stays unplugged for a week, a hub that is down overnight, a Modbus unit that refuses
one register: each would otherwise write a line per poll and bury everything else in the journal
(and wear the SD card).  Every loop that can fail repeatedly reports through one of these, keyed by
what failed (a unit, a request, a device).

A key that fails again soon after recovering (within ``flap_s``) is *flapping*: it is said once as
intermittent, then nothing more until it has been steady for ``flap_s`` (said once more), so a
busy unit that refuses now and then costs two lines, not two per refusal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LogOnce"]


@dataclass(slots=True)
class _Key:
    failing: bool = False
    flapping: bool = False
    reason: object = None
    last_failure_at: float = 0.0
    recovered_at: float | None = None


class LogOnce:
    """Remembers which keys are failing, so each outage is logged once on failure and once on recovery.

    ``key_fn`` maps the key a caller passes to the one remembered (for keys that are not hashable
    or carry more than identifies the fault); by default the key itself.  ``flap_s`` > 0 turns on
    flapping notes for the calls that pass an ``intermittent`` (and ``steady``) message.
    ``clock`` is monotonic seconds, injectable for tests.
    """

    def __init__(self, logger: logging.Logger, key_fn: Callable[[object], Hashable] | None = None, *,
                 flap_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.flap_s = flap_s
        self._key_fn = key_fn
        self._clock = clock
        self._keys: dict[Hashable, _Key] = {}

    def _key(self, key: object) -> Hashable:
        if self._key_fn is not None:
            return self._key_fn(key)
        # hash(), not isinstance(key, Hashable): the ABC check costs a microsecond, and the device
        # supervisor asks `failing` for every reading (bench.pipeline).
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"LogOnce key {key!r} is not hashable: pass a key_fn") from None
        return key

    def failing(self, key: object) -> bool:
        """Whether ``key`` failed and has not recovered since (a flapping key between failures is not failing)."""
        state = self._keys.get(self._key(key))
        return state is not None and state.failing

    def flapping(self, key: object) -> bool:
        """Whether ``key`` failed again soon after recovering and has not yet been steady for ``flap_s``."""
        state = self._keys.get(self._key(key))
        return state is not None and state.flapping

    def failure(self, key: object, message: str, *args: object, level: int = logging.WARNING,
                reason: object = None, intermittent: Sequence[object] | None = None,
                extra: Mapping[str, object] | None = None) -> bool:
        """Record a failure of ``key``; log ``message % args`` only if it is the first since recovery.

        A ``reason`` other than the one logged for the ongoing failure is logged again (a unit that
        refused with one exception code and now with another).  ``intermittent`` is ``(message, *args)``
        logged instead when the key fails within ``flap_s`` of recovering.  Returns whether it logged.
        """
        state = self._keys.setdefault(self._key(key), _Key())
        now = self._clock()
        state.last_failure_at = now
        note: Sequence[object] | None = None
        if state.flapping:
            pass  # said once as intermittent; the next note is when it is steady
        elif (not state.failing and intermittent is not None and state.recovered_at is not None
              and now - state.recovered_at < self.flap_s):
            state.flapping = True
            note = intermittent
        elif not state.failing or (reason is not None and reason != state.reason):
            note = (message, *args)
        state.failing = True
        state.reason = reason
        if note is None:
            return False
        self.logger.log(level, str(note[0]), *note[1:], extra=extra, stacklevel=2)  # the caller's line, not ours
        return True

    def recovered(self, key: object, message: str, *args: object, level: int = logging.INFO,
                  steady: Sequence[object] | None = None, extra: Mapping[str, object] | None = None) -> bool:
        """Record that ``key`` works; log ``message % args`` only if it had failed.

        Call it on every success: a flapping key logs ``steady`` (``(message, *args)``) once it has
        gone ``flap_s`` without a failure, and nothing before.  Returns whether it logged.
        """
        state = self._keys.get(self._key(key))
        if state is None:
            return False
        now = self._clock()
        note: Sequence[object] | None = None
        if state.flapping:
            if now - state.last_failure_at >= self.flap_s:
                state.flapping = False
                note = steady
        elif state.failing:
            state.recovered_at = now
            note = (message, *args)
        state.failing = False
        state.reason = None
        if note is None:
            return False
        self.logger.log(level, str(note[0]), *note[1:], extra=extra, stacklevel=2)  # the caller's line, not ours
        return True
