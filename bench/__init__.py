"""Reproducible benchmarks of Makazi against its peers and the raw-SQL limit.

Run all with ``make bench`` (``python -m bench``) or one topic with
``python -m bench features``.  Each topic module has a ``run(ctx)`` function
that prints a table and returns it as Markdown for ``bench/RESULTS.md``.
"""
