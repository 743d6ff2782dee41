"""Isolation and integration in git: plumbing (``repo``), and per attempt a worktree on its
own branch, the scope check, the gates and the merge into the run's integration branch
(``integration``).

May import ``agentrun.plan``, ``agentrun.store``, ``agentrun.proc``, ``agentrun.spec`` and
``agentrun.errors``; never ``agents`` (a sibling), ``run``, ``views`` or ``cli``.
"""
