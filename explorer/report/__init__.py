"""Stage 6, rendering: numbers with units, text tables, timelines and charts.

``units`` (``fmt_seconds``, ``fmt_bytes``), ``tables`` (an estimate as text / HTML), ``trace`` (Chrome trace
JSON), ``plots`` (matplotlib figures). They read results through their public attributes and compute no
cost, so every stage above (passes' notes, estimates, workflows) can print with them.
"""
