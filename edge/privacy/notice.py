"""The public transparency notice: DTPR-style JSON from the policy and the gateway config, and its HTML page, in each of the policy's languages.

The notice's top-level texts are in the policy's default language (its first
``notice_languages``; English when it names none, as before languages were added);
``translations`` holds the same texts in each other language. A text the policy does not
give in a language shows in the default language and is listed under ``untranslated``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge.privacy.catalogue import DEFAULT_LANGUAGE, words, words_or_english
from edge.privacy.explain import describe_rule, processes
from edge.privacy.policy import Policy
from edge.privacy.rules import kind_of
from edge.protocol.envelope import MAX_STATUS_BYTES
from edge.protocol.types import Channel
from edge.util.clock import now_ms

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "DRIVER_LANGUAGE",
    "MAX_STORED_NOTICE_BYTES",
    "NOTICE_SCHEMA",
    "abridgements",
    "build_notice",
    "notice_channels",
    "notice_in",
    "notice_languages",
    "render_notice_html",
    "stored_notice_bytes",
]

NOTICE_SCHEMA = "ocn-edge/notice/v1"
# The most a notice may take as the compact JSON a hub's register stores (OXP §7.3): twice the signed message's limit.
# A notice is text, and its JSON is 1.1 to 1.2 times its CBOR; a hostile one could otherwise be stored at up to seven
# times that (control characters escaped as \u00XX, float16 values written out in full).
MAX_STORED_NOTICE_BYTES = 2 * MAX_STATUS_BYTES
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


def _data(policy: Policy, channels: Sequence[Channel] | None, languages: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The notice's ``data`` in each language: one item per description, listing every channel it describes.

    Channels whose items are the same in every language but for the channel (the same name,
    unit, rule, purpose: twenty meters' ``voltage_l1``) share one item; its ``channel`` is the
    first of its ``channels``, so a reader that knows only ``channel`` still reads an item of
    the notice's first form (OXP §7.3).  Without channels, one item per releasing rule, by pattern.
    """
    texts = {language: _Texts(policy, language) for language in languages}
    if channels is None:
        return {
            language: [
                {
                    "channel": rule.pattern,
                    "device": rule.pattern.rsplit("/", 1)[0],
                    "process": processes(rule),
                    "leaves_as": describe_rule(rule, policy, "", t.words),
                    **t.item(rule.pattern, rule.purpose, None),
                }
                for rule in sorted(policy.rules, key=lambda r: r.pattern)
                if kind_of(rule).releases
            ]
            for language, t in texts.items()
        }
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for channel in channels:
        rule = policy.rule_for(channel.id)
        if rule is None or not kind_of(rule).releases:
            continue
        # drivers' notes to engineers come in parentheses; the public sees the name
        what = channel.description.split(" (")[0] or channel.id.rsplit("/", 1)[-1]
        said = {
            language: {
                "what": what,
                "unit": channel.unit,
                "personal": channel.personal,
                "process": processes(rule),
                "leaves_as": describe_rule(rule, policy, channel.unit, t.words),
                **t.item(rule.pattern, rule.purpose, what),
            }
            for language, t in texts.items()
        }
        key = json.dumps(said, sort_keys=True)
        if key in groups:
            for item in groups[key].values():
                item["channels"].append(channel.id)
            continue
        device = channel.id.rsplit("/", 1)[0]
        groups[key] = {language: {"channel": channel.id, "channels": [channel.id], "device": device, **item} for language, item in said.items()}
    return {language: [group[language] for group in groups.values()] for language in languages}


def _view(policy: Policy, config: Any, data: list[dict[str, Any]], language: str) -> dict[str, Any]:
    t = _Texts(policy, language)
    w = t.words
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
    data_in = _data(policy, channels, policy.languages)
    view = _view(policy, config, data_in[policy.languages[0]], policy.languages[0])
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
        # A translation's items are the notice's own, in the same order: their channel lists are not said twice (notice_in).
        "translations": {language: _view(policy, config, [_without_channels(d) for d in data_in[language]], language)
                         for language in policy.languages[1:]},
    }
    if policy.retention_days is not None:
        notice["retention_days"] = policy.retention_days
    return notice


def notice_languages(notice: Mapping[str, Any]) -> list[str]:
    """The languages a notice is in, its default first (English for a notice from before languages)."""
    languages = notice.get("languages")
    return [str(x) for x in languages] if isinstance(languages, list) and languages else [DEFAULT_LANGUAGE]


def _without_channels(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in _SHARED}


# What a translation's data item leaves to the notice's own item at the same place (OXP §7.3).
_SHARED = ("channels", "channel_count")


def notice_in(notice: Mapping[str, Any], language: str) -> dict[str, Any]:
    """The notice with its texts in ``language`` (one of its languages; the default language for any other).

    A translation's data items leave out the channel lists of the notice's own items at the
    same place (the same ``channel``): they are taken from there.
    """
    translation = (notice.get("translations") or {}).get(language)
    if language == notice_languages(notice)[0] or not isinstance(translation, Mapping):
        return {**notice, "untranslated": []}
    translated = {**notice, **translation}
    own, data = notice.get("data"), translation.get("data")
    if isinstance(own, list) and isinstance(data, list):
        translated["data"] = [
            {**{k: mine[k] for k in _SHARED if k in mine}, **item}
            if isinstance(item, Mapping) and isinstance(mine, Mapping) and mine.get("channel") == item.get("channel") else item
            for item, mine in zip(data, own + [None] * (len(data) - len(own)), strict=False)
        ]
    return translated


def notice_channels(item: Mapping[str, Any]) -> list[str]:
    """The channels one data item of a notice describes: its ``channels``, or its one ``channel`` (a notice of the first form)."""
    channels = item.get("channels")
    if isinstance(channels, list) and channels:
        return [str(c) for c in channels]
    return [str(item.get("channel", ""))]


def abridgements(notice: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Ever shorter forms of ``notice``, each still true, for a register that cannot take it whole (OXP §7.3).

    Each says what it leaves out under ``abridged``, with how many channels the notice
    describes, withholds and how many devices it names: first the lists of channels (each
    item keeps its first channel and a ``channel_count``; ``withheld`` goes), then the
    translations, then the items and the devices themselves.  The gateway's own notice page
    keeps everything.
    """
    data = list(notice.get("data") or [])
    counts = {
        "channels": sum(int(d.get("channel_count") or len(notice_channels(d))) for d in data),
        "withheld": len(notice.get("withheld") or []),
        "devices": len(notice.get("technology") or []),
    }

    def counted(item: Mapping[str, Any]) -> dict[str, Any]:
        lean = _without_channels(dict(item))
        if "channels" in item:
            lean["channel_count"] = len(notice_channels(item))
        return lean

    shorter = dict(notice, data=[counted(d) for d in data], withheld=[])
    shorter["translations"] = {
        language: dict(texts, data=[_without_channels(d) for d in texts.get("data") or []])
        for language, texts in (notice.get("translations") or {}).items()
    }
    shorter["abridged"] = {"left_out": ["channel lists"], **counts}
    yield shorter
    shorter = dict(shorter, translations={}, languages=list(notice.get("languages") or [DEFAULT_LANGUAGE])[:1])
    shorter["abridged"] = {"left_out": ["channel lists", "translations"], **counts}
    yield shorter
    shorter = dict(shorter, data=[], technology=[])
    shorter["abridged"] = {"left_out": ["channel lists", "translations", "data items", "devices"], **counts}
    yield shorter


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
    n = notice_in(notice, shown)
    # The page lists each channel under its device, as a notice of the first form had them.
    n["data"] = [
        {**d, "channel": channel, "device": channel.rsplit("/", 1)[0]} if "channels" in d else d
        for d in n.get("data") or []
        for channel in notice_channels(d)
    ]
    return _environment().get_template("notice.html").render(
        n=n,
        w=words_or_english(shown),
        language=shown,
        default=languages[0],
        driver=DRIVER_LANGUAGE,
        others=others,
    )


def stored_notice_bytes(notice: Mapping[str, Any]) -> int:
    """How many bytes ``notice`` takes as the compact UTF-8 JSON a hub's register stores (keys in any order)."""
    return len(json.dumps(notice, separators=(",", ":"), ensure_ascii=False).encode())
