"""The ``agentrun`` command: click commands only, each a thin shell that parses options,
calls the layers below and maps typed errors to exit codes (``common``). ``main`` holds the
group, which loads a command's module only when it is used: ``run`` (plan, run, resume),
``state`` (status, logs, recover), ``models``, ``clean``, ``monitor`` and ``report``.
"""
