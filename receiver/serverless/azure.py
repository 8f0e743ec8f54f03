"""Azure Functions (Python v2 model): ``receiver.serverless.azure:app``, the receiver as an
``AsgiFunctionApp`` plus a timer trigger that drains (``pip install 'bfl-hooks[azure]'``).

The function app's ``function_app.py`` is one line, ``from receiver.serverless.azure import
app``, and its ``host.json`` sets ``"extensions": {"http": {"routePrefix": ""}}`` so that the
webhook stays at ``/webhooks/bfl`` instead of ``/api/webhooks/bfl`` (``deploy/azure/``).

- HTTP: ``AsgiFunctionApp`` turns each invocation into an ASGI request for the receiver's app,
  the body as the host delivered it, and runs the app's lifespan once, on the first request:
  the store, storage and HTTP client are opened once per instance and reused.
- Jobs: no worker runs in the app (instances may be stopped or starved between requests); the
  ``drain`` timer function runs ``receiver.drain`` every minute, for ``DRAIN_BUDGET_SECONDS``,
  well inside the Consumption plan's 5-minute default timeout.

Settings are read, and the durability guard checked, when the host indexes the functions: a
misconfigured app fails to load with one line in the host's log.
"""

from __future__ import annotations

import logging

import azure.functions as func

from receiver.draining import drain_services
from receiver.render import dumps
from receiver.runtime import opened_services
from receiver.serverless.config import function_app, function_settings

log = logging.getLogger("receiver")

#: NCRONTAB (seconds first): every minute.
DRAIN_SCHEDULE = "0 */1 * * * *"
#: Seconds each timer drain may take: it ends before the next one is due.
DRAIN_BUDGET_SECONDS = 50.0

settings = function_settings()
app = func.AsgiFunctionApp(app=function_app(settings), http_auth_level=func.AuthLevel.ANONYMOUS)


@app.timer_trigger(schedule=DRAIN_SCHEDULE, arg_name="timer", run_on_startup=False)
async def drain(timer: func.TimerRequest) -> None:
    """Run the jobs due now and one reconcile pass (``receiver.draining``); the store is
    created if no webhook has come yet to create it."""
    async with opened_services(settings) as services:
        summary = await drain_services(services, budget=DRAIN_BUDGET_SECONDS)
    log.info("drain: %s", dumps(summary.as_dict()))
