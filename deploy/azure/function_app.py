"""Azure Functions (Python v2 model): the host indexes ``app`` (``receiver.serverless.azure``).

Publish this folder with ``host.json`` and a ``requirements.txt`` that installs
``bfl-hooks[azure,s3]`` (see the README's Serverless section).
"""

from receiver.serverless.azure import app

__all__ = ["app"]
