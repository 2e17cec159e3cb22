"""Who may get a link to a room: one policy, and the one place a grant is made.

A grant is one person's right to join one room (``bot.store.Grant``); every
personal link is minted from one. Grants are made on five paths: ``/meet``
(and a schedule's occurrence, the App Home's form, the message shortcut)
opening a room, *Get my link* (the channel card and the App Home), the Slack
Call sign-in, ``meetbot link`` (support), and the kick of someone who never
had a link (a refusal record). Each asks :class:`Admission` and builds its
grant with :func:`new_grant` or :func:`refusal_record`, so there is one
answer to "who may get in", whatever the door.

The rule, in order:

1. Someone the room's owner removed (a revoked grant) gets nothing.
2. Someone who already holds a grant (invited, or let in before) gets their
   own link again: re-sending it widens nothing.
3. Anyone else is looked up in the room's workspace, with its token, and
   refused when Slack cannot say who they are (fail closed). Then:

   * bots and deactivated accounts never get in;
   * people of another workspace never (on Enterprise Grid the room's org
     counts as its workspace: org-wide installs serve every workspace of it);
   * the room's owner always;
   * a guest only when invited, unless ``MEETBOT_ALLOW_GUESTS=1``;
   * a member of the channel the room was opened in (``conversations.members``;
     a room opened from the App Home has the owner's DM as its channel);
   * nobody else: the room id is not a secret (it is in every DM, in
     ``/meet list`` and in the Circle URL), so knowing it proves nothing.

Opening a room admits the requester as owner (a guest only with
``MEETBOT_ALLOW_GUESTS=1``) and the people they named as invitees; bots,
deactivated accounts and people of another workspace are refused there too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from bot.config import Settings
from bot.slack.gateway import (
    ChannelUnreadable,
    SlackGateway,
    UnknownUser,
    UserInfo,
    acting_for,
)
from bot.store import Grant, Room
from bot.tokens import new_jti

__all__ = [
    "Admission",
    "Admitted",
    "Decision",
    "OpenLookups",
    "Refused",
    "new_grant",
    "plain",
    "refusal_record",
]

log = logging.getLogger("meetbot.admission")

_MENTION = re.compile(r"<[@#]([A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class Admitted:
    """A person the policy lets have a link to a room, and in which capacity.

    ``role``: ``owner``, ``invitee`` (named when the room opened), ``member``
    (of the room's channel) or ``holder`` (already holds ``grant``).
    """

    user_id: str
    role: str
    info: UserInfo | None = None
    grant: Grant | None = None

    @property
    def display_name(self) -> str | None:
        if self.info is not None:
            return (self.info.display_name or self.info.name)[:120] or None
        return self.grant.display_name if self.grant is not None else None


@dataclass(frozen=True)
class Refused:
    """Why a person may not have a link.

    ``why`` is a short code (also the name of the page a Call sign-in shows:
    ``bot/web/pages.py``); ``message`` speaks to the person; ``about`` speaks
    of them to someone else (the requester of ``/meet``, an operator).
    """

    user_id: str
    why: str
    message: str
    about: str


Decision = Admitted | Refused


@dataclass(frozen=True)
class OpenLookups:
    """``users.info`` asked for the people of a room about to open, answers pending."""

    team_id: str
    enterprise_id: str | None
    ids: list[str]
    asked: list[Future[UserInfo]]


def plain(text: str) -> str:
    """Slack's ``<@U…>`` and ``<#C…>`` as bare ids, for a terminal."""
    return _MENTION.sub(r"\1", text)


def _refused(user_id: str, why: str, room: Room | None = None) -> Refused:
    owner = f"<@{room.owner_id}>" if room is not None else "the room's owner"
    you = f"<@{user_id}>"
    channel = _channel_words(room) if room is not None else "the room's channel"
    message, about = {
        "removed": (
            "The room's owner removed you from this room.",
            f"{you} was removed from this room by its owner",
        ),
        "not_member": (
            f"This room is only for the people {owner} invited and the members of "
            f"{channel}. Ask {owner} to invite you.",
            f"{you} was not invited and is not a member of {channel}",
        ),
        "guest": (
            "Guests can only join rooms they were invited to.",
            f"{you} is a guest and was not invited",
        ),
        "guest_owner": (
            "Guest accounts can join rooms they are invited to, but can't open rooms here. "
            "Ask a full member of the workspace to invite you.",
            f"{you} is a guest and may not open rooms here",
        ),
        "bot": ("Bots can't join rooms.", f"{you} is a bot and can't join a room"),
        "deactivated": ("Your Slack account is deactivated.", f"{you} is deactivated"),
        "wrong_workspace": (
            "This room belongs to another Slack workspace.",
            f"{you} is not in this room's Slack workspace",
        ),
        "unknown": (
            "Slack doesn't know you in this room's workspace.",
            f"I can't find {you}",
        ),
        "slack_down": (
            "Slack didn't tell me who you are just now; please try again in a moment.",
            f"Slack didn't tell me who {you} is (try again in a moment)",
        ),
    }[why]
    return Refused(user_id, why, message, about)


def _channel_words(room: Room) -> str:
    if room.channel_id[:1] in ("C", "G"):
        return f"<#{room.channel_id}>"
    return "the conversation it was opened in"


class Admission:
    """The one decision "may this person have a link to this room?"."""

    def __init__(self, settings: Settings, slack: SlackGateway) -> None:
        self.settings = settings
        self.slack = slack

    # -- opening a room --------------------------------------------------------------
    def ask_for_open(
        self,
        team_id: str,
        enterprise_id: str | None,
        requester: str,
        invitees: Sequence[str],
        *,
        lookups: Executor | None = None,
    ) -> OpenLookups:
        """Start ``users.info`` for the requester and each invitee (on ``lookups``, with
        the workspace's token) and return at once; :meth:`decide_open` judges them."""
        ids = [requester, *[u for u in dict.fromkeys(invitees) if u != requester]]
        with acting_for(team_id, enterprise_id):
            asked = [self.slack.ask_user(u, lookups) for u in ids]
        return OpenLookups(team_id, enterprise_id, ids, asked)

    def decide_open(self, lookups: OpenLookups) -> list[Decision]:
        """The requester (as owner) and each invitee, in that order, one decision each."""
        out: list[Decision] = []
        for i, (user_id, future) in enumerate(zip(lookups.ids, lookups.asked, strict=True)):
            person = self._person(user_id, future, lookups.team_id, lookups.enterprise_id)
            if isinstance(person, Refused):
                out.append(person)
            elif i == 0 and person.is_guest and not self.settings.allow_guests:
                out.append(_refused(user_id, "guest_owner"))
            else:
                out.append(Admitted(user_id, "owner" if i == 0 else "invitee", info=person))
        return out

    def for_open(
        self,
        team_id: str,
        enterprise_id: str | None,
        requester: str,
        invitees: Sequence[str],
        *,
        lookups: Executor | None = None,
    ) -> list[Decision]:
        """:meth:`ask_for_open` and :meth:`decide_open` in one: waits for Slack."""
        return self.decide_open(
            self.ask_for_open(team_id, enterprise_id, requester, invitees, lookups=lookups)
        )

    # -- a link to an open room ------------------------------------------------------
    def for_room(
        self, room: Room, user_id: str, grant: Grant | None, *, team_id: str | None = None
    ) -> Decision:
        """May ``user_id`` have a link to ``room``? ``grant`` is the one they hold, if any.

        ``team_id``: the workspace the request says the person acts from (the
        one a Call sign-in signed them in to); None when nobody says (the CLI).
        Calls Slack only for someone who holds no grant; never inside a
        database transaction, then.
        """
        if grant is not None:
            if grant.revoked_at is not None:
                return _refused(user_id, "removed", room)
            return Admitted(user_id, "holder", grant=grant)
        with acting_for(room.team_id, room.enterprise_id):
            person = self._person(
                user_id, self.slack.ask_user(user_id), room.team_id, room.enterprise_id
            )
            if isinstance(person, Refused):
                return person
            if team_id is not None and not _same_workspace(
                team_id, person.enterprise_id, room.team_id, room.enterprise_id
            ):
                return _refused(user_id, "wrong_workspace", room)
            if user_id == room.owner_id:
                return Admitted(user_id, "owner", info=person)
            if person.is_guest and not self.settings.allow_guests:
                return _refused(user_id, "guest", room)
            member = self._member(room, user_id)
        if isinstance(member, Refused):
            return member
        if member:
            return Admitted(user_id, "member", info=person)
        return _refused(user_id, "not_member", room)

    # -- the rules ------------------------------------------------------------------
    def _person(
        self, user_id: str, asked: Future[UserInfo], team_id: str, enterprise_id: str | None
    ) -> UserInfo | Refused:
        """Who ``user_id`` is, or why they can be in none of this workspace's rooms."""
        try:
            info = asked.result()
        except UnknownUser:
            return _refused(user_id, "unknown")
        except Exception as e:  # Slack down or refusing: say so rather than guess
            log.warning("users.info for %s failed: %s", user_id, type(e).__name__)
            return _refused(user_id, "slack_down")
        if info.is_bot:
            return _refused(user_id, "bot")
        if info.deleted:
            return _refused(user_id, "deactivated")
        if not _same_workspace(info.team_id, info.enterprise_id, team_id, enterprise_id):
            return _refused(user_id, "wrong_workspace")
        return info

    def _member(self, room: Room, user_id: str) -> bool | Refused:
        """Whether the person is in the room's channel; Refused when Slack cannot say now."""
        channel = room.channel_id
        if channel[:1] in ("U", "W"):
            # Opened from the App Home: its card went to the owner's DM, nobody else's.
            return user_id == channel
        try:
            return self.slack.is_member(channel, user_id)
        except ChannelUnreadable as e:
            # A DM or private channel the bot is not in, or a missing scope: unprovable.
            level = logging.WARNING if e.error == "missing_scope" else logging.INFO
            log.log(level, "conversations.members of %s: %s", channel, e.error)
            return False
        except Exception as e:
            log.warning("conversations.members of %s failed: %s", channel, type(e).__name__)
            return _refused(user_id, "slack_down", room)


def _same_workspace(
    team_id: str | None, enterprise_id: str | None, room_team: str, room_org: str | None
) -> bool:
    """A person's workspace is the room's: the same team, or the same Grid org."""
    if team_id is not None and team_id == room_team:
        return True
    return room_org is not None and enterprise_id == room_org


# -- grants ---------------------------------------------------------------------------
def new_grant(
    room: Room, admitted: Admitted, *, secret_version: int | None, now: int, grace: int
) -> Grant:
    """The grant of a person the policy admitted (and who holds none yet).

    Every grant that lets someone in is made here, from an :class:`Admitted`
    only. ``secret_version``: the stream secret current now, which the DM's
    link will be minted with (``Grant.secret_version``).
    """
    if not isinstance(admitted, Admitted) or admitted.grant is not None:
        raise TypeError("a new grant needs a person admitted by the policy, without a grant")
    return Grant(
        room_id=room.id,
        team_id=room.team_id,
        enterprise_id=room.enterprise_id,
        user_id=admitted.user_id,
        display_name=admitted.display_name,
        jti=new_jti(),
        exp=room.expires_at + grace,
        secret_version=secret_version,
        created_at=now,
    )


def refusal_record(room: Room, user_id: str, *, now: int, grace: int) -> Grant:
    """A revoked grant for someone the owner removed before they ever had a link.

    It lets nobody in: it is how every path above (rule 1) knows to refuse them.
    """
    return Grant(
        room_id=room.id,
        team_id=room.team_id,
        enterprise_id=room.enterprise_id,
        user_id=user_id,
        jti=new_jti(),
        exp=room.expires_at + grace,
        secret_version=None,
        revoked_at=now,
        created_at=now,
    )
