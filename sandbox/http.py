"""HTTP plumbing shared by the routes: the API key, bounded JSON bodies, 422s in the spec's shape.

Errors leave as ApiError; the app renders every one as ``{"detail": ...}``, which is the
spec's HTTPValidationError when ``detail`` is a list.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from sandbox.settings import SandboxSettings

M = TypeVar("M", bound=BaseModel)

#: Like FastAPI's APIKeyHeader (what BFL's generated spec describes): no key is a 403.
NO_KEY = "Not authenticated"


class AsciiJSONResponse(JSONResponse):
    """JSON escaped to ASCII: a prompt may hold a lone surrogate, which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


class ApiError(Exception):
    """An answer other than 2xx: ``status`` and the ``detail`` of its JSON body."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


def unprocessable(loc: list[str | int], msg: str, kind: str = "value_error") -> NoReturn:
    """Raise the spec's 422: ``{"detail": [{"loc", "msg", "type"}]}``."""
    raise ApiError(422, detail=[{"loc": loc, "msg": msg, "type": kind}])


def api_key(request: Request, settings: SandboxSettings) -> str:
    """The caller's ``x-key``: missing is 403, unknown (when keys are configured) 401."""
    key = request.headers.get("x-key", "").strip()
    if not key:
        raise ApiError(403, detail=NO_KEY)
    if settings.api_keys and key not in settings.api_keys:
        raise ApiError(401, detail="Invalid API key")
    return key


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes (checked while reading), else 422."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, detail=f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, detail=f"request body is larger than {limit} bytes")
    try:
        # NaN and Infinity are not JSON; Python's parser would let them through.
        return json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        unprocessable(["body", 0], f"JSON decode error: {exc}", "json_invalid")


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or a 422 listing every problem at ``["body", field...]``."""
    if not isinstance(data, dict):
        unprocessable(
            ["body"], "Input should be a valid dictionary or object", "model_attributes_type"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ApiError(422, detail=detail) from None


def query(request: Request, name: str) -> str:
    """A required query parameter, or the 422 FastAPI would give."""
    value = request.query_params.get(name)
    if value is None:
        unprocessable(["query", name], "Field required", "missing")
    return value
