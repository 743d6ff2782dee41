"""What the user wrote: workstream files and ``agentrun.toml`` read from disk (``files``),
validated field by field and turned into ``Workstream`` values (``workstreams``); durations,
value checks (``values``), the glob semantics of ``files`` (``globs``), the model catalog
(``models``).

Pure: reads the files it is given and nothing else. May import only ``agentrun.errors``
(checked by ``.importlinter``: no sqlite3, subprocess, requests, socket).
"""
