"""Planner analyses: settlement summary, impact, access, overlaps, density.

One module per analysis (:mod:`geo.analysis.summary`, :mod:`~geo.analysis.impact`,
:mod:`~geo.analysis.access`, :mod:`~geo.analysis.overlaps`,
:mod:`~geo.analysis.density`), each exposing a function of the same name.
Each analysis is one SQL statement built here with bound parameters and run
under ``SET LOCAL statement_timeout`` (``MAKAZI_ANALYSIS_TIMEOUT_MS``).
Lengths and areas are metres, computed in ``geography`` or UTM 37S
(EPSG:32737).  Small counts are suppressed by :mod:`geo.core.privacy`.
"""
