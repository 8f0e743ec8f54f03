"""``prune --images``: remove kept images that no event refers to any more.

Images are content-addressed, so one file may serve several events; an image goes only when no
event left in the store has its sha256. The listing is taken *before* the store is read, and an
image stored less than ``grace`` seconds ago is kept whatever the store says: a running receiver
places an image a moment before it records the event that refers to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from receiver.storage import Storage
from receiver.store import Store

#: The default ``--image-grace``: far longer than any download takes to be recorded.
DEFAULT_GRACE_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class PrunedImages:
    removed: int
    removed_bytes: int
    kept: int
    kept_bytes: int


async def prune_images(store: Store, storage: Storage, *, grace: float) -> PrunedImages:
    """Delete images no event refers to, stored more than ``grace`` seconds ago."""
    listed = await storage.blobs()
    referenced = await store.image_hashes()
    cutoff = time.time() - grace
    orphans = [b for b in listed if b.sha256 not in referenced and b.modified_at < cutoff]
    await storage.delete([b.location for b in orphans])
    removed_bytes = sum(b.size for b in orphans)
    return PrunedImages(
        removed=len(orphans),
        removed_bytes=removed_bytes,
        kept=len(listed) - len(orphans),
        kept_bytes=sum(b.size for b in listed) - removed_bytes,
    )
