"""bfl-hooks receiver: take BFL webhooks, keep every image, run your handlers.

Write a handler::

    import receiver

    @receiver.on("ready")
    async def save(event: receiver.Event) -> None:
        data = await event.image.read()
"""

from receiver.app import create_app
from receiver.draining import DrainSummary, drain
from receiver.events import Event, Status, StoredImage
from receiver.handlers import Handler, on
from receiver.settings import Settings

__all__ = [
    "DrainSummary",
    "Event",
    "Handler",
    "Settings",
    "Status",
    "StoredImage",
    "create_app",
    "drain",
    "on",
]
