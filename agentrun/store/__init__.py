"""What survives a crash: the SQLite state DB (``state``), its schema and migrations
(``schema``), the JSONL event log (``events``), where things live on disk (``layout``), the
crash points that tests kill at (``crashpoints``) and the redaction of secrets from all of it
(``redaction``).

May import ``agentrun.proc``, ``agentrun.spec`` and ``agentrun.errors``.
"""
