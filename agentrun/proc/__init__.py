"""Processes: spawning in a process group of its own, waiting with a timeout, a cancel
descriptor and a heartbeat, stopping a group, bounding a running log (``process``); running
one command to an ``ExecResult`` (``command``). Used by commands, setup, gates and workers.

May import ``agentrun.spec`` and ``agentrun.errors``.
"""
