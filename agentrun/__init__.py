"""agentrun: run many units of development work in parallel under a dependency graph."""

__version__ = "0.1.0"
