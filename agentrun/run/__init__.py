"""Running a plan: the orchestrator (``orchestrator``), one attempt from worktree to durable
result (``attempt``), containment of everything an attempt starts (``containment``), recovery
after a crash (``recovery``) and cleanup (``cleanup``); *where* attempts execute sits behind
``backends``.

May import everything below it (``agents``, ``git``, ``plan``, ``store``, ``proc``, ``spec``);
never ``views`` (a sibling) or ``cli``.
"""
