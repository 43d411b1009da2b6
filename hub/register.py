"""The transparency register's view of one gateway's notice: its texts in each of its languages, with the words to label them.

A notice names its languages (its default first) and carries its texts in each other one
(docs/protocol.md §7.3); the register shows every language a gateway publishes, labelled in
that language, and a notice from before languages as the English one it is.  An item of a
notice describes one or more channels, each of which the register shows; an abridged notice
says what it leaves out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.privacy.catalogue import Words, words_or_english
from edge.privacy.notice import notice_channels, notice_in, notice_languages
from hub.models import Notice
from hub.reports import notice_problem

__all__ = ["NoticeView", "notice_views", "register_entry"]


@dataclass(frozen=True, slots=True)
class NoticeView:
    """The notice in one language: ``n`` its texts, ``w`` the register's labels (in English for a language the hub has no words for)."""

    language: str
    default: str
    n: Mapping[str, Any]
    w: Words

    def channels(self, item: Mapping[str, Any]) -> list[str]:
        """Every channel one data item describes (§7.3: its ``channels``, or its one ``channel``)."""
        return notice_channels(item)

    def more(self, item: Mapping[str, Any]) -> str:
        """"and 19 more channels" for an item of an abridged notice that counts its channels without listing them; else ""."""
        count = item.get("channel_count")
        shown = len(notice_channels(item))
        return self.w.count("register.more", count - shown) if isinstance(count, int) and count > shown else ""

    def abridged(self) -> str:
        """What an abridged notice leaves out and how many channels it covers, in words; "" for a notice published whole."""
        abridged = self.n.get("abridged")
        if not isinstance(abridged, Mapping):
            return ""
        keys = [f"register.left_{str(part).replace(' ', '_')}" for part in abridged.get("left_out") or []]
        left_out = self.w.join([self.w(key) for key in keys if self.w.has(key)]) or "?"
        return self.w.count("register.abridged", int(abridged.get("channels") or 0), left_out=left_out)


def notice_views(notice: Mapping[str, Any]) -> list[NoticeView]:
    """One view per language of a notice that fits the schema (hub.reports.NOTICE), its default first."""
    languages = notice_languages(notice)
    translated = notice.get("translations") or {}
    return [
        NoticeView(language, languages[0], notice_in(notice, language), words_or_english(language))
        for language in languages
        if language == languages[0] or language in translated  # a language named without its texts is not shown as if it had them
    ]


def register_entry(notice: Notice) -> dict[str, Any]:
    """What the register shows of one stored notice: the notice, why it cannot be shown (None when it can), and its views."""
    problem = notice_problem(notice.notice)
    return {"notice": notice, "problem": problem, "views": [] if problem else notice_views(notice.notice)}
