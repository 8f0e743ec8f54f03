"""What can go wrong when talking to BFL, as a small tree (catch the level you care about)::

    BFLError
    ├── ValidationError      a request BFL would refuse: found before sending, or a 422
    ├── APIStatusError       BFL answered with an error status (.status_code, .detail)
    │   ├── AuthError        401 / 403: the key is missing, wrong or not allowed
    │   ├── OutOfCredits     402: never retried
    │   ├── RateLimited      429: raised only once the bounded retries ran out
    │   └── ServerError      5xx: raised once the retries that are safe ran out
    ├── TransportError       no answer at all: connection refused, timeout, reset
    ├── TaskFailed           the task ended Error, Request/Content Moderated or not found
    └── WaitTimeout          the task was still running when ``wait`` gave up

Messages never carry the API key or a webhook secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from submitter._types import Result


class BFLError(Exception):
    """Base of every error the submitter raises."""


class ValidationError(BFLError):
    """The request is invalid. ``errors`` lists ``{"loc", "msg", "type"}`` like BFL's 422.

    ``status_code`` is 422 when BFL refused it, None when it was caught before sending (then
    nothing was sent and nothing was charged).
    """

    def __init__(
        self, message: str, errors: list[dict[str, Any]], status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.errors = errors
        self.status_code = status_code

    @classmethod
    def one(
        cls, loc: tuple[str | int, ...], msg: str, kind: str = "value_error"
    ) -> ValidationError:
        """A client-side error about one field."""
        where = ".".join(str(p) for p in loc)
        return cls(f"{where}: {msg}", [{"loc": list(loc), "msg": msg, "type": kind}])


class APIStatusError(BFLError):
    """BFL answered with a status other than 2xx; ``detail`` is its JSON ``detail``."""

    def __init__(self, message: str, status_code: int, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class AuthError(APIStatusError):
    """401 or 403: the API key was refused (or, on a delivery URL, the URL expired)."""


class OutOfCredits(APIStatusError):
    """402: the account has no credits left. Never retried: only a top-up fixes it."""


class RateLimited(APIStatusError):
    """429: too many active tasks, still refused after waiting and retrying."""

    def __init__(
        self, message: str, status_code: int, detail: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code, detail)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: BFL failed; retried only where a retry cannot submit (and charge) twice."""


class TransportError(BFLError):
    """No HTTP answer: the connection failed, timed out or broke."""


class TaskFailed(BFLError):
    """The task ended without an image; ``result`` says how."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


class WaitTimeout(BFLError, TimeoutError):
    """``wait`` ran out of time; the task may still finish (and its webhook still come)."""

    def __init__(self, message: str, result: Result | None) -> None:
        super().__init__(message)
        self.result = result
