"""The public transparency notice: DTPR-style JSON from the policy and the gateway config, and its HTML page, in each of the policy's languages.

The notice's top-level texts are in the policy's default language (its first
``notice_languages``; English when it names none, as before languages were added);
``translations`` holds the same texts in each other language. A text the policy does not
give in a language shows in the default language and is listed under ``untranslated``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge.privacy.catalogue import DEFAULT_LANGUAGE, words, words_or_english
from edge.privacy.explain import describe_rule, processes
from edge.privacy.policy import Policy
from edge.privacy.rules import kind_of
from edge.protocol.types import Channel
from edge.util.clock import now_ms

if TYPE_CHECKING:
    import jinja2

__all__ = ["DRIVER_LANGUAGE", "NOTICE_SCHEMA", "build_notice", "notice_in", "notice_languages", "render_notice_html"]

NOTICE_SCHEMA = "ocn-edge/notice/v1"
DRIVER_LANGUAGE = "en"  # drivers name their channels in English; a policy may name them in another language


@functools.cache
def _environment() -> jinja2.Environment:
    # Built at the first page, not at import: a gateway whose notice page nobody opens never loads jinja2 (bench.gateway_load).
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("edge.privacy", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class _Texts:
    """The language-dependent part of the notice in one language, noting each text that fell back to the default language."""

    def __init__(self, policy: Policy, language: str) -> None:
        self.policy = policy
        self.language = language
        self.words = words(language)
        self.untranslated: list[str] = []

    def city(self, key: str, path: str, otherwise: str = "") -> str:
        """One of the policy's texts in this language, ``otherwise`` when the policy leaves it out."""
        text = self.policy.text(key, self.language)
        if text is None:
            self.untranslated.append(path)
            return str(getattr(self.policy, key))
        return text or otherwise

    def item(self, pattern: str, purpose: str, what: str | None) -> dict[str, Any]:
        """A data item's purpose and public name in this language, and which of them fell back."""
        fell_back: list[str] = []
        texts: dict[str, Any] = {}
        if what is not None:
            named = self.policy.channel_text(pattern, "what", self.language)
            texts["what"] = named or what
            if not named and self.language != DRIVER_LANGUAGE:
                fell_back.append("what")
        if purpose:
            said = self.policy.channel_text(pattern, "purpose", self.language)
            texts["purpose"] = said if said is not None else purpose
            if said is None:
                fell_back.append("purpose")
        else:
            said = self.policy.text("purpose", self.language)
            texts["purpose"] = said if said is not None else self.policy.purpose
            if said is None:
                fell_back.append("purpose")
        if fell_back:
            texts["untranslated"] = fell_back
        return texts


def _view(policy: Policy, config: Any, channels: Sequence[Channel] | None, language: str) -> dict[str, Any]:
    t = _Texts(policy, language)
    w = t.words
    data: list[dict[str, Any]] = []
    if channels is not None:
        for channel in channels:
            rule = policy.rule_for(channel.id)
            if rule is None or not kind_of(rule).releases:
                continue
            # drivers' notes to engineers come in parentheses; the public sees the name
            what = channel.description.split(" (")[0] or channel.id.rsplit("/", 1)[-1]
            item = {
                "channel": channel.id,
                "device": channel.id.rsplit("/", 1)[0],
                "what": what,
                "unit": channel.unit,
                "personal": channel.personal,
                "process": processes(rule),
                "leaves_as": describe_rule(rule, policy, channel.unit, w),
            }
            data.append({**item, **t.item(rule.pattern, rule.purpose, what)})
    else:
        for rule in sorted(policy.rules, key=lambda r: r.pattern):
            if not kind_of(rule).releases:
                continue
            item = {
                "channel": rule.pattern,
                "device": rule.pattern.rsplit("/", 1)[0],
                "process": processes(rule),
                "leaves_as": describe_rule(rule, policy, "", w),
            }
            data.append({**item, **t.item(rule.pattern, rule.purpose, None)})
    view: dict[str, Any] = {
        "accountable": {
            "organisation": t.city("organisation", "accountable.organisation"),
            "contact": t.city("contact", "accountable.contact"),
        },
        "purpose": t.city("purpose", "purpose"),
        "technology": [{"device": d.name, "driver": d.driver, "type": w.technology(d.driver)} for d in list(getattr(config, "devices", ()) or ())],
        "data": data,
        "default": w("notice.default"),
        "retention": t.city("retention", "retention", w("notice.not_stated")),
        "storage": t.city("storage", "storage", w("notice.storage")),
        "access": t.city("access", "access", w("notice.not_stated")),
        "pseudonym_key_rotation": w.duration(policy.rotate_ms),
        "privacy_budget": ({"epsilon": policy.budget.epsilon, "period": w.duration(policy.budget.period_ms)} if policy.budget else None),
    }
    if policy.retention_days is not None:
        view["deletion"] = w.count("notice.deletion", policy.retention_days)
    if language != policy.languages[0]:
        view["untranslated"] = t.untranslated
    return view


def build_notice(
    policy: Policy,
    config: Any,
    *,
    channels: Sequence[Channel] | None = None,
    generated_ms: int | None = None,
) -> dict[str, Any]:
    """The machine-readable notice (DTPR taxonomy) for one gateway, in every language the policy names.

    ``config`` needs only ``config.gateway.id``, ``.site``, ``.latitude``, ``.longitude``
    and ``config.devices``, each with ``.name`` and ``.driver`` (``edge.config.GatewayConfig``
    has them).  ``channels`` are the channels the drivers declare; without them the
    notice lists the policy's rules by pattern.
    """
    gateway = config.gateway
    view = _view(policy, config, channels, policy.languages[0])
    if channels is not None:
        withheld = [c.id for c in channels if (r := policy.rule_for(c.id)) is None or not kind_of(r).releases]
    else:
        withheld = [r.pattern for r in policy.rules if not kind_of(r).releases]
    data = view.pop("data")
    notice: dict[str, Any] = {
        "schema": NOTICE_SCHEMA,
        "generated_ms": generated_ms if generated_ms is not None else now_ms(),
        "place": {
            "gateway_id": gateway.id,
            "site": getattr(gateway, "site", ""),
            "latitude": getattr(gateway, "latitude", None),
            "longitude": getattr(gateway, "longitude", None),
        },
        "accountable": view.pop("accountable"),
        "purpose": view.pop("purpose"),
        "technology": view.pop("technology"),
        "data": data,
        "withheld": withheld,
        "default": view.pop("default"),
        "process": sorted({label for item in data for label in item["process"]}),
        **view,
        "policy": {
            "name": policy.name,
            "version": policy.version,
            "digest": policy.digest.hex(),
            "signed_by": policy.signed_by,
        },
        "languages": list(policy.languages),
        "translations": {language: _view(policy, config, channels, language) for language in policy.languages[1:]},
    }
    if policy.retention_days is not None:
        notice["retention_days"] = policy.retention_days
    return notice


def notice_languages(notice: Mapping[str, Any]) -> list[str]:
    """The languages a notice is in, its default first (English for a notice from before languages)."""
    languages = notice.get("languages")
    return [str(x) for x in languages] if isinstance(languages, list) and languages else [DEFAULT_LANGUAGE]


def notice_in(notice: Mapping[str, Any], language: str) -> dict[str, Any]:
    """The notice with its texts in ``language`` (one of its languages; the default language for any other)."""
    translation = (notice.get("translations") or {}).get(language)
    if language == notice_languages(notice)[0] or not isinstance(translation, Mapping):
        return {**notice, "untranslated": []}
    return {**notice, **translation}


def render_notice_html(
    notice: Mapping[str, Any],
    language: str | None = None,
    *,
    link: Callable[[str], str] = lambda language: f"?lang={language}",
) -> str:
    """The plain-language, accessible HTML page of a notice in ``language`` (its default when None or not one of its own).

    No scripts, no external resources; ``link`` makes the address of the page in another
    of the notice's languages (a query by default; the ``notice`` command writes files).
    """
    languages = notice_languages(notice)
    shown = language if language in languages else languages[0]
    others = [(code, words_or_english(code).name, link(code)) for code in languages if code != shown]
    return _environment().get_template("notice.html").render(
        n=notice_in(notice, shown),
        w=words_or_english(shown),
        language=shown,
        default=languages[0],
        driver=DRIVER_LANGUAGE,
        others=others,
    )
