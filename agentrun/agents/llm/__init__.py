"""The built-in LLM agent: an OpenAI-compatible HTTP client (``client``) with the wire format
it speaks (``protocol``) and the classification of its failures (``failures``), the one retry loop
with budgets, cache and ledger (``call``), the limiter and ledger shared by all workers
through the state DB (``shared``), the context sent to the model (``context``), reading the
edits it replies with (``replies``), applying them to file texts in memory (``patches``) and
to the worktree (``edits``), and the agent loop itself (``agent``).
"""
