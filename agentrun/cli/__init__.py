"""The ``agentrun`` command: click commands only, each a thin shell that parses options,
calls the layers below and maps typed errors to exit codes (``common``). ``main`` holds the
group and the commands that run, inspect and clean up; ``monitor`` and ``report`` are loaded
only when used.
"""
