"""Room topics from what people typed elsewhere: a modal's text box, a Slack message.

Pure functions (fuzzed in tests/test_blockkit.py). A topic ends up in the
room card, every DM, the App Home and the AMS room name, so it must come out
as plain, single-line text that cannot form Slack markup: no ``<``/``>``
(they become ``‹``/``›``, as in ``handlers/text.py``), no control or bidi
characters, no lone surrogates (they break UTF-8 encoding downstream), and
no group ping (``<!here>``, ``<!channel>``, ``<!subteam^…>``) surviving as text.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MESSAGE_TOPIC_MAX", "clean_topic", "topic_from_message"]

MESSAGE_TOPIC_MAX = 80
_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF])
_ANGLE = re.compile(r"<([^<>]*)>")
_ENTITY = re.compile(r"&(amp|lt|gt);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">"}


def _truncate(text: str, limit: int) -> str:
    """Cut at a word boundary when one is near, with an ellipsis; never mid-surrogate."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def clean_topic(raw: str, limit: int) -> str:
    """Raw text (a ``plain_text_input`` value) → a safe one-line topic of at most ``limit``."""
    out = []
    for ch in raw:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Zl", "Zp"):
            out.append(" " if ch.isspace() else "")
        elif cat == "Cs" or ord(ch) in _BIDI:
            continue
        else:
            out.append(ch)
    text = " ".join("".join(out).split()).replace("<", "‹").replace(">", "›")
    return _truncate(text, limit)


def _markup(match: re.Match[str]) -> str:
    """What one ``<…>`` construct of message text reads as in a topic."""
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if inner.startswith("@"):  # a person: their label if Slack gave one, else nothing
        return "@" + label.lstrip("@") if label else ""
    if inner.startswith("#"):
        return "#" + label if label else ""
    if inner.startswith("!"):  # @here, @channel, user groups: never; a date: its text
        return label if target.lower().startswith("!date^") else ""
    return label or target  # a link: its label, else the address as text


def topic_from_message(text: str, limit: int = MESSAGE_TOPIC_MAX) -> str:
    """A Slack message's ``text`` (mrkdwn, Slack-escaped) → a topic of at most ``limit``."""
    plain = _ANGLE.sub(_markup, text or "")
    plain = _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], plain)
    return clean_topic(plain, limit)
