"""What the user wrote, read and validated: a whole source and its ``agentrun.toml`` (``load``),
one file read safely (``documents``), what each field accepts (``fields``), the values it becomes
(``workstream``, ``command``), and durations, value checks (``values``), the glob semantics of
``files`` (``globs``) and the model catalog (``models``).

Pure: reads the files it is given and nothing else. May import only ``agentrun.errors``
(checked by ``.importlinter``: no sqlite3, subprocess, requests, socket).
"""
