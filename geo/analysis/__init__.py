"""Planner analyses: settlement summary, impact, access, overlaps, density.

Each analysis is one SQL statement built here with bound parameters and run
under ``SET LOCAL statement_timeout`` (``MAKAZI_ANALYSIS_TIMEOUT_MS``).
Lengths and areas are metres, computed in ``geography`` or UTM 37S
(EPSG:32737).  Small counts are suppressed by :mod:`geo.privacy`.
"""

from geo.analysis.access import access, access_features
from geo.analysis.density import density
from geo.analysis.impact import ImpactRequest, impact, impact_features
from geo.analysis.overlaps import overlaps
from geo.analysis.summary import summary

__all__ = [
    "ImpactRequest",
    "access",
    "access_features",
    "density",
    "impact",
    "impact_features",
    "overlaps",
    "summary",
]
