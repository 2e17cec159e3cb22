"""The mark that says an AMS broadcast is one of this bot's rooms.

Rooms are created with it in the broadcast's ``metaData``; reconciliation
touches only broadcasts that carry it, because everything else on the AMS
application belongs to someone else.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["AMS_MARKER", "ams_marker", "is_ours"]

AMS_MARKER = "meetbot"


def ams_marker(team_id: str) -> str:
    """The ``metaData`` that marks an AMS broadcast as made by this bot."""
    return json.dumps({AMS_MARKER: 1, "team": team_id}, separators=(",", ":"))


def is_ours(broadcast: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(broadcast.get("metaData") or "{}").get(AMS_MARKER))
    except (ValueError, AttributeError):
        return False
