"""Showing where things stand, read from the state DB and the event log: ``status``, live
``progress`` and ``monitor`` in a terminal, the ``web`` monitor, reports (``report_data``
builds a run's report, ``report`` renders it as text, JSON and CSV, ``report_html`` as a page,
``report_compare`` compares two runs; ``report_models``), plan rendering (``plan``), the model
table and conversations (``models``), and output that never stops work (``output``).

May import everything below it except ``run`` (a sibling): a view never starts work.
"""
