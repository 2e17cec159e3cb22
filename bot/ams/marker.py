"""The mark that says an AMS broadcast is one of *this deployment's* rooms.

Rooms are created with it in the broadcast's ``metaData``; reconciliation
touches only broadcasts that carry it, because everything else on the AMS
application belongs to someone else. That includes another meetbot: a staging
and a production bot may share one AMS application, each with its own
database, and each must take only its own rooms for its own. So the marker
names the deployment (``Store.deployment_id``, made once per database), not
just "meetbot". A marker from before deployments had identities (no
``deployment``) is recognised as meetbot's (``marker_of``) but is nobody's in
particular: reconciliation leaves such rooms alone.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["AMS_MARKER", "ams_marker", "is_ours", "marker_of"]

AMS_MARKER = "meetbot"


def ams_marker(team_id: str, deployment: str) -> str:
    """The ``metaData`` that marks an AMS broadcast as made by this deployment."""
    return json.dumps(
        {AMS_MARKER: 1, "team": team_id, "deployment": deployment}, separators=(",", ":")
    )


def marker_of(broadcast: dict[str, Any]) -> dict[str, Any] | None:
    """The meetbot marker in a broadcast's ``metaData``; None when it carries none.

    A participant's stream (``mainTrackStreamId`` set) is never a room, whatever
    its metadata says: participants choose their own.
    """
    if broadcast.get("mainTrackStreamId"):
        return None
    try:
        data = json.loads(broadcast.get("metaData") or "{}")
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict) or not data.get(AMS_MARKER):
        return None
    return data


def is_ours(broadcast: dict[str, Any], deployment: str) -> bool:
    """Whether the broadcast is a room that ``deployment`` made."""
    marker = marker_of(broadcast)
    return marker is not None and marker.get("deployment") == deployment
