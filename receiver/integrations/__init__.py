"""Built-in handlers, selected in ``RECEIVER_HANDLERS`` like any other.

- ``receiver.integrations.forward:send``: each finished task, signed (Standard Webhooks),
  posted as JSON to your own backend (``FORWARD_URL``).
"""
