"""Shapefile field names: one table of deliberate 10-character names for every property.

A dBASE field name holds at most 10 characters; GDAL would cut
``structure_number`` to ``structure_`` and ``settlement_id`` to ``settlement``.
Exports write the short names below instead, and an importer maps them back
with :func:`long_name`.  Names of 10 characters or fewer are kept as they are.

>>> short_name("structure_number"), long_name("struct_no")
('struct_no', 'structure_number')
>>> short_name("storeys"), long_name("storeys")
('storeys', 'storeys')
"""

from __future__ import annotations

__all__ = ["MAX_FIELD_NAME", "SHORT_NAMES", "long_name", "short_name"]

MAX_FIELD_NAME = 10

SHORT_NAMES: dict[str, str] = {
    "structure_number": "struct_no",
    "settlement_id": "settl_id",
    "wall_material": "wall_mat",
    "roof_material": "roof_mat",
    "review_state": "review",
    "review_note": "review_nt",
    "position_accuracy_m": "pos_acc_m",
}

_LONG_NAMES = {short: long for long, short in SHORT_NAMES.items()}


def short_name(field: str) -> str:
    """The Shapefile name of ``field``.

    Raises
    ------
    KeyError
        For a name longer than 10 characters missing from :data:`SHORT_NAMES`.
    """
    if field in SHORT_NAMES:
        return SHORT_NAMES[field]
    if len(field) > MAX_FIELD_NAME:
        raise KeyError(f"{field!r} has no Shapefile name: add one to SHORT_NAMES")
    return field


def long_name(short: str) -> str:
    """The property a Shapefile field name stands for (case-insensitive, as dBASE is)."""
    key = short.lower()
    return _LONG_NAMES.get(key, key)
