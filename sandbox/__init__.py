"""bfl-sandbox: a local, BFL-compatible image API that really sends webhooks.

In process::

    from sandbox import SandboxSettings, create_app

    app = create_app(SandboxSettings(task_seconds=0.5))

From a shell: ``bfl-sandbox serve --port 8001``. See sandbox/README.md.
"""

from sandbox.app import create_app
from sandbox.faults import FAULTS
from sandbox.settings import SandboxSettings

__all__ = ["FAULTS", "SandboxSettings", "create_app"]
