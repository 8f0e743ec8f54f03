"""``python -m tests.azure_driver``: ``deploy/azure/function_app.py`` loaded and called the way
the Functions host's Python worker does, through the real ``azure-functions`` library: its
``FunctionApp`` lists the functions (``get_functions``), and each invocation is the library's
own ``HttpRequest`` or ``TimerRequest`` handed to the registered function.

Reads one JSON step per line on standard input: ``{"http": {method, url, headers, body_b64}}``
or ``{"timer": true}``; writes one JSON line per step (the answer, or the drain's log) and, at
the end, ``{"opened": N}``, how many times the app's services were opened. The host itself is
not run (it is a .NET program that cannot be installed offline); the Context it would pass is
the one stand-in here.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest

import receiver.app
from receiver.runtime import Services

#: One entry each time the app's lifespan opened its services.
_opened: list[int] = []
_real_opened_services = receiver.app.opened_services  # type: ignore[attr-defined]


@asynccontextmanager
async def _counted(*args: Any, **kwargs: Any) -> AsyncIterator[Services]:
    """The real ``opened_services``, counted: the app's lifespan enters it."""
    _opened.append(1)
    async with _real_opened_services(*args, **kwargs) as services:
        yield services


receiver.app.opened_services = _counted  # type: ignore[attr-defined]

#: The function app as deployed (deploy/azure/).
FUNCTION_APP = Path(__file__).resolve().parents[1] / "deploy" / "azure" / "function_app.py"


class HostContext(func.Context):
    """What the host passes each invocation (the seam this driver stands in for)."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def invocation_id(self) -> str:
        return "00000000-0000-0000-0000-000000000000"

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return threading.local

    @property
    def function_name(self) -> str:
        return self._name

    @property
    def function_directory(self) -> str:
        return "."

    @property
    def trace_context(self) -> Any:
        return None  # the host's W3C trace context: nothing here reads it

    @property
    def retry_context(self) -> Any:
        return None


async def main() -> None:
    # As the worker does: import the function app's function_app.py from its folder.
    spec = importlib.util.spec_from_file_location("function_app", FUNCTION_APP)
    assert spec is not None
    assert spec.loader is not None
    function_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(function_app)
    app: func.AsgiFunctionApp = function_app.app
    functions = {f.get_function_name(): f for f in app.get_functions()}
    http = functions["http_app_func"].get_user_function()
    timer = functions["drain"].get_user_function()
    for line in sys.stdin:
        step = json.loads(line)
        if "timer" in step:
            await timer(TimerRequest())
            print(json.dumps({"timer": "done"}), flush=True)
            continue
        sent = step["http"]
        request = func.HttpRequest(
            method=sent["method"],
            url=sent["url"],
            headers=sent.get("headers", {}),
            body=base64.b64decode(sent.get("body_b64", "")),
        )
        response = await http(request, HostContext("http_app_func"))
        answer = {
            "status": response.status_code,
            "headers": dict(response.headers),
            "body": response.get_body().decode(errors="replace"),
        }
        print(json.dumps(answer), flush=True)
    await app.middleware.notify_shutdown()  # type: ignore[no-untyped-call] # the host's shutdown: the lifespan closes
    app.startup_task_done = False  # so the library's __del__ does not shut down again
    print(json.dumps({"opened": len(_opened)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
