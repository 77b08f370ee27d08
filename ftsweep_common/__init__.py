"""The ground floor every layer of ftsweep stands on: its error classes and its YAML reading.

``orchestrator``, ``trainers`` and ``search_spaces`` import from here; this package imports none
of them, so a trainer or a search space never reaches up into the orchestrator.
"""
