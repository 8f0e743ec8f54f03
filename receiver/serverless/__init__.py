"""Entry points for function platforms, one thin module each (``aws``, ``gcp``, ``azure``).

Each hands the platform's request to the same receiver app (``receiver.create_app``) and runs
background work only inside invocations (inline processing, drains): nothing of the receiver's
own code is written twice.
"""
