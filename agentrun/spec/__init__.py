"""What the user wrote: workstream files and ``agentrun.toml``, read, validated and turned into
``Workstream`` values; durations, value checks, the glob semantics of ``files``, the model catalog.

Pure: reads the files it is given and nothing else. May import only ``agentrun.errors``
(checked by ``.importlinter``: no sqlite3, subprocess, requests, socket).
"""
