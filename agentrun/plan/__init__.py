"""Decisions without effects: the DAG and its waves, critical path and conflict prediction
(``planner``), which ready workstream runs next (``scheduler``), what happens after an attempt
(``retry``), after a failed model call (``llm_retry``) and before one (``budget``).

Pure, tested directly. May import ``agentrun.spec`` and ``agentrun.errors`` only.
"""
