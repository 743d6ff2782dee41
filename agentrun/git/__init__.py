"""Isolation and integration in git: plumbing (``repo``), and per attempt a worktree on its
own branch (``worktrees``), the scope check and the gates (``verify``), and the merge queue
into the run's integration branch (``merge``). Within the package ``merge`` may import
``verify`` and ``worktrees``, ``verify`` may import ``worktrees``, and all of them ``repo``.

May import ``agentrun.plan``, ``agentrun.store``, ``agentrun.proc``, ``agentrun.spec`` and
``agentrun.errors``; never ``agents`` (a sibling), ``run``, ``views`` or ``cli``.
"""
