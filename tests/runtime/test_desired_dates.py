"""The gateway's side of OXP §8.4's dates, without a hub: what DesiredState takes, ignores or refuses, and keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.desired import DesiredChange, DesiredError, DesiredIgnored, DesiredState, is_older
from edge.protocol.desired import sign_document
from edge.protocol.keys import generate_keypair

HUB = generate_keypair()


def signed(etag: str, issued: object = None, **more: object) -> dict:
    document = {"device_id": "pole-7", "fleet": "street", "etag": etag, **more}
    if issued is not None:
        document["issued_ms"] = issued
    return sign_document(document, HUB)


def test_a_date_not_a_whole_number_of_milliseconds_is_refused(tmp_path: Path) -> None:
    state = DesiredState(tmp_path, device_id="pole-7")
    for bad in (-1, 1.5, True, "1800000000000"):
        with pytest.raises(DesiredError, match="issued_ms"):
            state.verify(signed("e1", bad), "e1", HUB.public_key())


def test_older_than_the_document_in_force_or_than_a_reload_under_way_is_ignored_and_the_date_survives_a_restart(tmp_path: Path) -> None:
    state = DesiredState(tmp_path, device_id="pole-7")
    change = state.verify(signed("e2", 2_000), "e2", HUB.public_key())
    state.record_success(change, policy_toml=None)
    again = DesiredState(tmp_path, device_id="pole-7")
    assert (again.applied_etag, again.applied_issued_ms) == ("e2", 2_000)
    with pytest.raises(DesiredIgnored) as stale:
        again.verify(signed("e1", 1_999), "e1", HUB.public_key())
    assert stale.value.kind == "stale"
    with pytest.raises(DesiredIgnored) as undated:
        again.verify(signed("e1"), "e1", HUB.public_key())
    assert undated.value.kind == "undated"
    with pytest.raises(DesiredIgnored):  # another document of the same date: not the later of the two
        again.verify(signed("e3", 2_000), "e3", HUB.public_key())
    assert again.verify(signed("e3", 2_001), "e3", HUB.public_key()).issued_ms == 2_001
    assert again.verify(signed("e2", 2_000), "e2", HUB.public_key()).issued_ms == 2_000  # the one in force, signed again alike
    assert is_older(DesiredChange("e3", None, None, issued_ms=2_000), again) and not is_older(DesiredChange("e2", None, None, issued_ms=2_000), again)
    with pytest.raises(DesiredIgnored):  # a reload to a document dated 3,000 was asked for: 2,500 must not overtake it
        again.verify(signed("e4", 2_500), "e4", HUB.public_key(), floor_ms=3_000)
    assert is_older(DesiredChange("e1", None, None, issued_ms=1_999), again)
    assert is_older(DesiredChange("e1", None, None), again)
    assert not is_older(DesiredChange("e5", None, None, issued_ms=2_001), again)


def test_what_is_not_the_hubs_answer_under_this_etag_is_ignored_not_refused(tmp_path: Path) -> None:
    state = DesiredState(tmp_path, device_id="pole-7")
    cases: dict[str, list[tuple[object, str]]] = {
        "etag": [(signed("e1", 5), "e2"), (signed("e1", 5), ""), (sign_document({"device_id": "pole-7", "cleared": True, "issued_ms": 5}, HUB), "e1")],
        "device": [(sign_document({"device_id": "pole-8", "etag": "e1", "issued_ms": 5}, HUB), "e1")],
        "unsigned": [({**signed("e1", 5), "signature": "AAAA"}, "e1"), ({"document": {"device_id": "pole-7"}, "alg": "none"}, "e1"), (None, "e1")],
    }
    for kind, offers in cases.items():
        for offer, etag in offers:
            with pytest.raises(DesiredIgnored) as caught:
                state.verify(offer, etag, HUB.public_key())
            assert caught.value.kind == kind, (offer, etag)
    assert state.refused_etag == "" and state.applied_issued_ms is None


def test_the_document_in_force_dated_later_keeps_its_date_and_nothing_else_changes(tmp_path: Path) -> None:
    state = DesiredState(tmp_path, device_id="pole-7")
    state.record_success(state.verify(signed("e1"), "e1", HUB.public_key()), policy_toml=None)
    assert state.applied_issued_ms is None
    state.adopt_date("e2", 7_000)  # not the one in force: nothing
    assert state.applied_issued_ms is None
    state.adopt_date("e1", 7_000)
    state.adopt_date("e1", 9_000)  # dated already: the first date stays
    again = DesiredState(tmp_path, device_id="pole-7")
    assert (again.applied_etag, again.applied_issued_ms) == ("e1", 7_000)


def test_a_refused_clear_is_not_tried_again_while_the_document_it_would_replace_stays_in_force(tmp_path: Path) -> None:
    state = DesiredState(tmp_path, device_id="pole-7")
    state.record_success(state.verify(signed("e1", 5), "e1", HUB.public_key()), policy_toml=None)
    state.record_failure("", "the local config did not start: port in use")
    assert (state.clear_refused_for, state.last_error) == ("e1", "desired clear not applied: the local config did not start: port in use")
    state.record_success(state.verify(signed("e2", 6), "e2", HUB.public_key()), policy_toml=None)
    assert state.clear_refused_for is None, "another document in force: the next clear is tried"
    state.record_failure("", "the local config did not start: port in use")
    again = DesiredState(tmp_path, device_id="pole-7")  # the gateway restarted (the port may be free now): tried again
    assert again.clear_refused_for is None and again.applied_etag == "e2"
