"""The policy file: validation with readable errors, glob precedence, and the canonical digest."""

from __future__ import annotations

import hashlib

import cbor2
import pytest

from edge.privacy import Policy, PolicyError, PrivacyStage, Rule, load_policy, parse_policy
from edge.privacy.policy import canonical_encoding

from .support import HEADER, PED_CHANNELS, make_policy, policy_text


def rule_of(policy: Policy, channel_id: str) -> Rule:
    rule = policy.rule_for(channel_id)
    assert rule is not None, f"no rule of the policy matches {channel_id}"
    return rule


def problems_of(body: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        make_policy(body)
    return err.value.problems


def test_personal_channel_marked_keep_is_refused_naming_file_rule_and_channel() -> None:
    policy = make_policy('[channels."ped-1/mac"]\nrule = "keep"\n')
    with pytest.raises(PolicyError) as err:
        PrivacyStage(policy, PED_CHANNELS)
    assert err.value.problems == [
        'policy.toml: channels."ped-1/mac".rule = "keep": ped-1/mac is personal; keep needs allow_personal = true '
        "and a legal_basis (or use drop, pseudonymize, count_distinct or generalize_location)"
    ]


def test_personal_keep_is_accepted_with_allow_personal_and_a_legal_basis() -> None:
    policy = make_policy(
        '[channels."ped-1/mac"]\nrule = "keep"\nallow_personal = true\nlegal_basis = "By-law 123, s. 4"\n'
    )
    assert PrivacyStage(policy, PED_CHANNELS).output_channels()[0].personal


def test_allow_personal_without_legal_basis_is_refused() -> None:
    assert problems_of('[channels."ped-1/mac"]\nrule = "keep"\nallow_personal = true\n') == [
        'policy.toml: channels."ped-1/mac".allow_personal = true: expected a legal_basis naming the law or consent '
        "that permits releasing personal data"
    ]


def test_unknown_rule_names_the_accepted_rules() -> None:
    (problem,) = problems_of('[channels."pm-1/pm2_5"]\nrule = "blur"\n')
    assert problem.startswith('policy.toml: channels."pm-1/pm2_5".rule = "blur": expected one of keep, drop, quantize')


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        """
        [channels."a/x"]
        rule = "quantize"
        [channels."a/y"]
        rule = "aggregate"
        window = "7m"
        [channels."a/z"]
        rule = "pseudonymize"
        bits = 30
        colour = "red"
        """
    )
    assert problems == [
        'policy.toml: channels."a/x".step = None: expected a step to round values to, e.g. step = 0.5',
        'policy.toml: channels."a/y".window = "7m": expected a window that divides a day evenly (so windows align '
        "to UTC midnight)",
        'policy.toml: channels."a/z".colour = "red": expected no such setting for rule "pseudonymize" (settings: '
        "bits, description, purpose, rule)",
        'policy.toml: channels."a/z".bits = 30: expected a multiple of 4 (the pseudonym is written as hex digits)',
    ]


def test_epsilon_without_a_budget_is_refused() -> None:
    (problem,) = problems_of('[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nepsilon = 0.5\n')
    assert "needs a [privacy_budget] section" in problem


def test_missing_accountable_organisation_is_refused() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy('[channels."a/b"]\nrule = "keep"\n', path="/etc/ocn/p.toml")
    assert "p.toml: policy.organisation is missing: the public notice must say who is accountable and why" in (
        err.value.problems
    )


def test_toml_syntax_error_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[channels\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert err.value.problems == ["broken.toml: line 1, column 10: Expected ']' at the end of a table declaration (not valid TOML)"]


def test_missing_policy_file_is_a_policy_error(tmp_path) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "absent.toml")


def test_exact_channel_id_beats_any_glob() -> None:
    policy = make_policy('[channels."*/pm2_5"]\nrule = "drop"\n[channels."pm-1/pm2_5"]\nrule = "keep"\n')
    assert rule_of(policy, "pm-1/pm2_5").rule == "keep"
    assert rule_of(policy, "pm-2/pm2_5").rule == "drop"


def test_more_literal_glob_wins_and_ties_go_to_the_lexically_first_pattern() -> None:
    policy = make_policy(
        """
        [channels."ped-*/*"]
        rule = "drop"
        [channels."ped-*/mac"]
        rule = "count_distinct"
        window = "15m"
        [channels."*-1/x"]
        rule = "keep"
        [channels."a-*/x"]
        rule = "drop"
        """
    )
    assert rule_of(policy, "ped-1/mac").rule == "count_distinct"
    assert rule_of(policy, "ped-1/rssi").rule == "drop"
    assert rule_of(policy, "a-1/x").pattern == "*-1/x"
    assert policy.rule_for("nothing/here") is None


def test_digest_is_sha256_of_canonical_cbor_of_the_parsed_document() -> None:
    policy = make_policy('[channels."a/b"]\nrule = "quantize"\nstep = 0.5\n')
    assert policy.digest == hashlib.sha256(canonical_encoding(policy.document)).digest()
    assert cbor2.loads(canonical_encoding(policy.document)) == policy.document


def test_digest_ignores_comments_layout_and_key_order() -> None:
    a = parse_policy(policy_text('[channels."a/b"]\nrule = "quantize"\nstep = 0.5\n'))
    b = parse_policy(
        '# reformatted\n[channels."a/b"]\nstep = 0.5   # half a degree\nrule = "quantize"\n' + HEADER
    )
    assert a.digest == b.digest


def test_digest_changes_when_a_rule_changes() -> None:
    a = make_policy('[channels."a/b"]\nrule = "quantize"\nstep = 0.5\n')
    b = make_policy('[channels."a/b"]\nrule = "quantize"\nstep = 0.25\n')
    assert a.digest != b.digest


def test_dates_are_refused_so_the_canonical_encoding_stays_simple() -> None:
    problems = problems_of('[channels."a/b"]\nrule = "keep"\nsince = 2026-01-01\n')
    assert any("since = datetime.date(2026, 1, 1): dates and times are not allowed" in p for p in problems)


def test_shipped_policies_all_load(tmp_path) -> None:
    from pathlib import Path

    shipped = sorted(Path(__file__).resolve().parents[2].joinpath("policies").glob("*.toml"))
    assert len(shipped) >= 7
    for path in shipped:
        assert load_policy(path).rules, path

