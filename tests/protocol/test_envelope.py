"""The OXP/2 envelope: COSE_Sign1 batches and status reports that any COSE library verifies."""

from __future__ import annotations

import cbor2
import pytest
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from edge.protocol import (
    MAX_BATCH_BYTES,
    BatchHeader,
    BatchTooLarge,
    ProtocolError,
    key_id,
    open_batch,
    open_status,
    peek_header,
    raw_public_key,
    seal_batch,
    seal_status,
    signature_verifies,
)
from edge.protocol.types import Channel, Reading


def reason(excinfo) -> str:
    return excinfo.value.reason


def resign(private_key, protected_map, payload):
    """A COSE_Sign1 built straight from RFC 9052 §4.4, to forge messages a conforming signer could make."""
    protected = cbor2.dumps(protected_map, canonical=True)
    signature = private_key.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))


def test_sealed_batch_opens_to_the_same_header_channels_and_readings(device_key, header, channels, readings):
    batch = open_batch(seal_batch(header, channels, readings, device_key), device_key.public_key())
    assert batch.header == header
    assert batch.channels == channels
    assert len(batch.readings) == len(readings)
    assert batch.header.identity == (key_id(device_key), 3, 17)


def test_sealing_is_deterministic(device_key, header, channels, readings):
    assert seal_batch(header, channels, readings, device_key) == seal_batch(header, channels, readings, device_key)


def test_an_independent_cose_library_verifies_the_signature(device_key, other_key, header, channels, readings):
    sealed = seal_batch(header, channels, readings, device_key)
    tagged = cbor2.loads(sealed)
    assert tagged.tag == 18
    # pycose 1.1 expects a list where cbor2 6 yields a tuple inside tags, so hand it the decoded array.
    message = Sign1Message.from_cose_obj([tagged.value[0], dict(tagged.value[1]), *tagged.value[2:]], True)
    message.key = OKPKey(crv=Ed25519, x=raw_public_key(device_key))
    assert message.verify_signature()
    message.key = OKPKey(crv=Ed25519, x=raw_public_key(other_key))
    assert not message.verify_signature()


def test_signature_structure_is_exactly_rfc_9052_sig_structure(device_key, header, channels, readings):
    protected, unprotected, payload, signature = cbor2.loads(seal_batch(header, channels, readings, device_key)).value
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    device_key.public_key().verify(signature, sig_structure)
    assert cbor2.loads(protected)[1] == -8
    assert cbor2.loads(protected)[4] == key_id(device_key)
    assert -65537 in cbor2.loads(protected)
    assert dict(unprotected) == {}


def test_known_counters_travel_under_integer_labels_and_others_by_name(device_key, header):
    counted = BatchHeader(**{**{n: getattr(header, n) for n in BatchHeader.__dataclass_fields__},
                             "counters": {"readings_dropped": 5, "unclean_stops": 1, "modem_resets": 2}})
    sealed = seal_batch(counted, (), [], device_key)
    assert cbor2.loads(cbor2.loads(sealed).value[0])[-65537][7] == {0: 5, 2: 1, "modem_resets": 2}
    assert open_batch(sealed, device_key.public_key()).header.counters == counted.counters


def test_header_is_readable_without_the_key(device_key, header, channels, readings):
    assert peek_header(seal_batch(header, channels, readings, device_key)) == header


def test_a_tampered_payload_byte_is_rejected_as_bad_signature(device_key, header, channels, readings):
    sealed = bytearray(seal_batch(header, channels, readings, device_key))
    sealed[-80] ^= 0x01  # inside the payload, before the 64-byte signature
    with pytest.raises(ProtocolError, match="signature does not verify") as err:
        open_batch(bytes(sealed), device_key.public_key())
    assert reason(err) == "bad_signature"


def test_every_single_byte_change_is_rejected(device_key, header, channels, readings):
    sealed = seal_batch(header, channels, readings[:3], device_key)
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x40
        with pytest.raises(ProtocolError):
            open_batch(bytes(tampered), device_key.public_key())


def test_a_wrong_key_is_rejected_naming_both_key_ids(device_key, other_key, header, channels, readings):
    sealed = seal_batch(header, channels, readings, device_key)
    with pytest.raises(ProtocolError, match=key_id(device_key).hex()) as err:
        open_batch(sealed, other_key.public_key())
    assert reason(err) == "bad_signature"
    assert key_id(other_key).hex() in str(err.value)


def test_a_signature_by_another_key_under_the_right_key_id_is_rejected(device_key, other_key, header):
    protected = cbor2.loads(cbor2.loads(seal_batch(header, (), [], device_key)).value[0])
    forged = resign(other_key, protected, b"")
    with pytest.raises(ProtocolError) as err:
        open_batch(forged, device_key.public_key())
    assert reason(err) == "bad_signature"


@pytest.mark.parametrize("keep", [0, 1, 5, 40, -1])
def test_a_truncated_batch_is_rejected_as_truncated(device_key, header, channels, readings, keep):
    sealed = seal_batch(header, channels, readings, device_key)
    with pytest.raises(ProtocolError, match="truncated") as err:
        open_batch(sealed[:keep], device_key.public_key())
    assert reason(err) == "truncated"


def test_trailing_bytes_are_rejected(device_key, header):
    with pytest.raises(ProtocolError, match="follow") as err:
        open_batch(seal_batch(header, (), [], device_key) + b"\x00", device_key.public_key())
    assert reason(err) == "malformed"


def test_a_batch_over_one_mebibyte_is_refused_before_parsing(device_key):
    with pytest.raises(ProtocolError) as err:
        open_batch(b"\xd2" + bytes(MAX_BATCH_BYTES), device_key.public_key())
    assert reason(err) == "too_large"


def test_sealing_more_than_one_mebibyte_raises_batch_too_large(device_key, header):
    import os

    channel = Channel("noise/x")
    readings = [Reading("noise/x", i, int.from_bytes(os.urandom(7), "big")) for i in range(150_000)]
    with pytest.raises(BatchTooLarge, match="seal fewer readings"):
        seal_batch(header, (channel,), readings, device_key)


def test_alg_ed25519_minus_19_is_accepted(device_key, header):
    protected = cbor2.loads(cbor2.loads(seal_batch(header, (), [], device_key)).value[0])
    protected[1] = -19
    payload = cbor2.loads(seal_batch(header, (), [], device_key)).value[2]
    assert open_batch(resign(device_key, protected, payload), device_key.public_key()).header == header


def test_another_algorithm_is_rejected(device_key, header):
    protected = cbor2.loads(cbor2.loads(seal_batch(header, (), [], device_key)).value[0])
    protected[1] = -7  # ES256
    with pytest.raises(ProtocolError) as err:
        open_batch(resign(device_key, protected, b""), device_key.public_key())
    assert reason(err) == "unsupported_algorithm"


def test_a_future_version_is_rejected_as_unsupported(device_key, header):
    protected = cbor2.loads(cbor2.loads(seal_batch(header, (), [], device_key)).value[0])
    protected[-65537][0] = 3
    with pytest.raises(ProtocolError, match="version 3") as err:
        open_batch(resign(device_key, protected, b""), device_key.public_key())
    assert reason(err) == "unsupported_version"


def test_an_unknown_codec_is_rejected_as_unsupported(device_key, header):
    protected = cbor2.loads(cbor2.loads(seal_batch(header, (), [], device_key)).value[0])
    protected[-65537][5] = 9
    with pytest.raises(ProtocolError) as err:
        open_batch(resign(device_key, protected, b""), device_key.public_key())
    assert reason(err) == "unsupported_codec"


def test_a_status_report_is_not_accepted_as_a_batch(device_key):
    status = seal_status({"ts_ms": 1}, device_id="pole-0042", private_key=device_key)
    with pytest.raises(ProtocolError) as err:
        open_batch(status, device_key.public_key())
    assert reason(err) == "wrong_type"


def test_a_batch_is_not_accepted_as_a_status_report(device_key, header):
    with pytest.raises(ProtocolError) as err:
        open_status(seal_batch(header, (), [], device_key), device_key.public_key())
    assert reason(err) == "wrong_type"


def test_status_report_round_trips_signed(device_key):
    report = {"ts_ms": 1_700_000_000_000, "spool_batches": 4, "policy_digest": bytes(32), "errors": ["pm-1: no reply"]}
    opened = open_status(seal_status(report, device_id="pole-0042", private_key=device_key), device_key.public_key())
    assert opened == {**report, "device_id": "pole-0042"}


def test_status_report_for_another_device_id_is_refused(device_key):
    with pytest.raises(ValueError, match="pole-1"):
        seal_status({"device_id": "pole-1"}, device_id="pole-0042", private_key=device_key)


def test_tampered_status_report_is_rejected(device_key):
    sealed = bytearray(seal_status({"ts_ms": 5}, device_id="pole-0042", private_key=device_key))
    sealed[-70] ^= 1
    with pytest.raises(ProtocolError) as err:
        open_status(bytes(sealed), device_key.public_key())
    assert reason(err) == "bad_signature"


def test_sealing_with_a_key_that_does_not_match_the_header_key_id_is_refused(other_key, header):
    with pytest.raises(ValueError, match="not the id of the signing key"):
        seal_batch(header, (), [], other_key)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device_id", "Pole_42", "device_id = 'Pole_42'"),
        ("key_id", b"short", "key_id"),
        ("seq", -1, "seq = -1"),
        ("boot_epoch", 2**64, "boot_epoch"),
        ("codec", "gzip", "codec = 'gzip'"),
        ("policy_digest", "abc", "policy_digest"),
        ("counters", {"Dropped Readings": 1}, "counter name"),
        ("counters", {"readings_dropped": -4}, "readings_dropped"),
    ],
)
def test_invalid_header_fields_are_refused_naming_the_field(header, field, value, message):
    fields = {name: getattr(header, name) for name in BatchHeader.__dataclass_fields__}
    with pytest.raises(ValueError, match=message):
        BatchHeader(**{**fields, field: value})


def test_an_unknown_integer_counter_label_is_kept_under_a_readable_name(device_key, header):
    protected = cbor2.loads(cbor2.loads(seal_batch(header, (), [], device_key)).value[0])
    protected[-65537][7] = {0: 3, 9: 12}
    payload = cbor2.loads(seal_batch(header, (), [], device_key)).value[2]
    opened = open_batch(resign(device_key, protected, payload), device_key.public_key())
    assert opened.header.counters == {"readings_dropped": 3, "counter_9": 12}


def test_decode_unverified_reads_a_batch_whose_signature_is_wrong(device_key, header, channels, readings):
    from edge.protocol import decode_unverified

    sealed = bytearray(seal_batch(header, channels, readings, device_key))
    sealed[-1] ^= 1  # the last signature byte
    assert len(decode_unverified(bytes(sealed)).readings) == len(readings)


def _outcome(verify, message, public_key):
    try:
        return verify(message, public_key)
    except ProtocolError as exc:
        return (exc.reason, exc.detail)


def test_verifying_the_envelope_already_read_gives_what_verifying_the_bytes_gives(device_key, other_key, header, channels, readings):
    """A receiver reads a batch once, with the strict reader, to find its key; verify_envelope checks that reading
    exactly as verify_sealed checks the bytes: the same header and payload, the same refusals with the same details."""
    from edge.protocol.envelope import verify_envelope, verify_sealed
    from edge.protocol.preauth import read_envelope

    sealed = seal_batch(header, channels, readings, device_key)
    tampered = bytearray(sealed)
    tampered[-80] ^= 0x01
    protected = cbor2.loads(cbor2.loads(sealed).value[0])
    future = dict(protected)
    future[-65537] = dict(protected[-65537])
    future[-65537][0] = 3
    not_a_map = dict(protected)
    not_a_map[-65537] = [1, 2]
    unknown_codec = dict(protected)
    unknown_codec[-65537] = dict(protected[-65537])
    unknown_codec[-65537][5] = 9
    messages = [
        sealed,
        bytes(tampered),
        resign(other_key, protected, cbor2.loads(sealed).value[2]),
        resign(device_key, future, b""),
        resign(device_key, not_a_map, b""),
        resign(device_key, unknown_codec, b""),
        seal_status({"ts_ms": 1}, device_id="pole-0042", private_key=device_key),
    ]
    outcomes = []
    for data in messages:
        for key in (device_key, other_key):
            envelope = read_envelope(data, limit=MAX_BATCH_BYTES)
            expected = _outcome(verify_sealed, data, key.public_key())
            assert _outcome(verify_envelope, envelope, key.public_key()) == expected
            assert signature_verifies(envelope, key.public_key()) == signature_verifies(data, key.public_key())
            outcomes.append(expected if isinstance(expected[0], str) else "verified")
    assert outcomes[0] == "verified"
    assert {outcome[0] for outcome in outcomes[1:]} >= {"bad_signature", "unsupported_version", "malformed", "unsupported_codec", "wrong_type"}
