"""Fernet encryption of what the bot stores and must not keep in clear.

The AMS stream secrets (``bot.ams.stream_secret``) and each workspace's bot
token (``bot.slack.workspaces``) are sealed with ``MEETBOT_SECRET_KEY``, so a
database dump or backup is not a credential. Fernet authenticates as well as
encrypts: a wrong key is detected (:class:`VaultError`) instead of yielding a
garbage secret that would silently break every link.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["Vault", "VaultError"]


class VaultError(Exception):
    """MEETBOT_SECRET_KEY is not a Fernet key, or cannot decrypt what was stored.

    The message names the variable, never a value: it is shown to operators as is.
    """


class Vault:
    """Seal and open strings with one Fernet key."""

    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode("utf-8"))
        except (ValueError, TypeError, UnicodeError):
            raise VaultError(
                "MEETBOT_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None

    def __repr__(self) -> str:
        return "Vault(key=***)"

    def encrypt(self, plaintext: str) -> str:
        """The ciphertext (ASCII, safe for a Text column)."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """The plaintext; VaultError when the key does not match (it was changed?)."""
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise VaultError(
                "MEETBOT_SECRET_KEY cannot decrypt a stored secret: the key differs from "
                "the one it was stored with"
            ) from None
