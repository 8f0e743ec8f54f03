"""bfl-hooks submitter: the whole BFL API from Python, with webhooks filled in.

::

    import submitter

    async with submitter.BFL() as bfl:
        task = await bfl.generate("flux-dev", prompt="a lighthouse", metadata={"chat_id": 42})
        result = await bfl.wait(task)          # or let the receiver's webhook bring it
        await bfl.download(result, "lighthouse.jpg")

Errors: see ``submitter._errors`` for the tree (``BFLError`` at its root). From a shell:
``bfl-submit --help``.
"""

from submitter._client import BFL
from submitter._errors import (
    APIStatusError,
    AuthError,
    BFLError,
    OutOfCredits,
    RateLimited,
    ServerError,
    TaskFailed,
    TransportError,
    ValidationError,
    WaitTimeout,
)
from submitter._finetunes import Finetunes
from submitter._http import RetryPolicy
from submitter._settings import Settings
from submitter._types import Result, Task
from submitter.models import Status

__all__ = [
    "BFL",
    "APIStatusError",
    "AuthError",
    "BFLError",
    "Finetunes",
    "OutOfCredits",
    "RateLimited",
    "Result",
    "RetryPolicy",
    "ServerError",
    "Settings",
    "Status",
    "Task",
    "TaskFailed",
    "TransportError",
    "ValidationError",
    "WaitTimeout",
]
