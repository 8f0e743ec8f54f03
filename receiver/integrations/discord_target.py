"""Where an event goes on Discord, from its metadata: a channel, or an interaction's reply.

An interaction's token lives 15 minutes (``interactions/receiving-and-responding.mdx``); its
id, a snowflake, says when it was made (``reference.mdx``: the top bits are milliseconds since
Discord's epoch), so a reply past its time is refused here, without asking Discord.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from receiver.events import Event
from receiver.handlers import PermanentError, Skipped
from receiver.integrations.common import optional

INTERACTION_TTL = 15 * 60.0
#: Margin kept before an interaction token's end: a send started later may not make it.
INTERACTION_MARGIN = 5.0
DISCORD_EPOCH_MS = 1_420_070_400_000
_SNOWFLAKE = re.compile(r"[0-9]{1,20}")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,500}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where one event goes: a channel (as the bot) or an interaction's webhook."""

    channel_id: str | None = None
    application_id: str | None = None
    token: str | None = None
    expires_at: float | None = None
    """When the interaction's token dies (Unix time), when its id was given."""

    @property
    def key(self) -> str:
        """The pacing key: never the token itself, which is a credential."""
        if self.channel_id is not None:
            return f"discord:channel:{self.channel_id}"
        digest = hashlib.sha256((self.token or "").encode()).hexdigest()[:16]
        return f"discord:interaction:{self.application_id}:{digest}"

    @property
    def where(self) -> str:
        """How errors and logs name the target (no token)."""
        if self.channel_id is not None:
            return f"Discord channel {self.channel_id}"
        return f"the interaction of Discord application {self.application_id}"


def _snowflake(event: Event, key: str) -> str | None:
    value = optional(event, key)
    if value is not None and not _SNOWFLAKE.fullmatch(str(value)):
        raise PermanentError(f"{key} must be a Discord id (a snowflake: up to 20 digits)")
    return None if value is None else str(value)


def target_of(event: Event, now: float) -> Target:
    """The event's ``Target`` from its metadata: ``Skipped`` when it names no Discord place,
    ``PermanentError`` when what it names cannot be used (wrong types, half an interaction, an
    interaction past its 15 minutes)."""
    application = _snowflake(event, "discord_application_id")
    token = optional(event, "discord_interaction_token")
    if application is not None or token is not None:
        if application is None or token is None:
            raise PermanentError(
                "discord_application_id and discord_interaction_token go together: "
                "the metadata has only one"
            )
        if not _TOKEN.fullmatch(str(token)):
            raise PermanentError(
                "discord_interaction_token is not an interaction token "
                "(up to 500 letters, digits, '-', '_', '.')"
            )
        interaction = _snowflake(event, "discord_interaction_id")
        expires = None
        if interaction is not None:
            made = ((int(interaction) >> 22) + DISCORD_EPOCH_MS) / 1000
            expires = made + INTERACTION_TTL
            if now > expires - INTERACTION_MARGIN:
                raise PermanentError(
                    f"the interaction of Discord application {application} expired "
                    f"{(now - made) / 60:.0f} minutes after it was made: Discord accepts its "
                    "reply for 15 minutes"
                )
        return Target(application_id=application, token=str(token), expires_at=expires)
    channel = _snowflake(event, "discord_channel_id")
    if channel is None:
        raise Skipped(
            "no discord_channel_id or discord_application_id + discord_interaction_token "
            "in the metadata"
        )
    return Target(channel_id=channel)
