"""What an export reads: the rows a user may see, and each property as a format can hold it.

Every format takes the same rows (live, visible to the user, optionally one
settlement's, in ``id`` order) and the same columns: Makazi's ``id``, every
registry property (``version`` among them) and the geometry.  Formats without
native dates or lists get them as text built by PostgreSQL, so nothing is lost:
date-times as RFC 3339 UTC with microseconds, string lists as JSON arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    Text,
    bindparam,
    cast,
    func,
    select,
)

from geo.core.auth import Principal
from geo.core.tables import settlements_export
from geo.layers.registry import Collection, Property

__all__ = [
    "batches",
    "GEOMETRY_DIGITS",
    "ExportRows",
    "PROFILE",
    "Progress",
    "for_export",
    "property_values",
    "settlement_condition",
    "text_value",
]

# Decimal digits PostGIS writes in text geometries (GeoJSON, KML, WKT): 15 after the
# point is every digit a double holds at Nairobi's longitudes, so coordinates round-trip.
GEOMETRY_DIGITS = 15
RFC3339_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def settlement_condition(collection: Collection, settlement_id: int) -> ColumnElement[bool]:
    """Rows of one settlement (for settlements themselves: that settlement)."""
    table = collection.table
    column = table.c.settlement_id if "settlement_id" in table.c else table.c.id
    return column == bindparam(None, settlement_id, type_=BigInteger)


def text_value(prop: Property, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``column`` as text when the property is a date-time or a list, else as it is."""
    if prop.kind == "datetime":
        return func.to_char(func.timezone("UTC", column), RFC3339_UTC)
    if prop.kind == "string-array":
        return cast(func.to_json(column), Text)
    return column


def property_values(collection: Collection) -> list[ColumnElement[Any]]:
    """``id`` and every property, labelled by name, dates and lists as text."""
    table = collection.table
    return [
        table.c.id.label("id"),
        *(text_value(p, table.c[p.name]).label(p.name) for p in collection.properties),
    ]


PROFILE = Property(
    "profile",
    writable=False,
    description="The settlement's reported profile fields ({name: value}) as JSON text",
)


def for_export(collection: Collection) -> Collection:
    """What an export of ``collection`` writes: settlements also carry their ``profile``.

    The profile comes from the ``settlements_export`` view (migration 0016), so
    every format reads it as one more column.
    """
    if collection.name != "settlements" or collection.table is settlements_export:
        return collection
    return dataclasses.replace(
        collection,
        table=settlements_export,
        properties=(*collection.properties, PROFILE),
        _by_name={},
    )


@dataclass
class Progress:
    """How far a format's stream has got: the id of the last row in the chunks yielded.

    A builder sets ``last_id`` before it yields a chunk that ends with that row's
    bytes; None while only a header has gone (or for a format that cannot resume).
    """

    last_id: int | None = None


@dataclass(frozen=True)
class ExportRows:
    """The rows one export takes: a collection's live rows ``user`` may see, maybe one settlement's.

    Attributes
    ----------
    batch
        Rows read from the server-side cursor at a time.
    after
        Only rows with a greater id: the rest of an export already sent up to that
        row.  Builders then leave out what came before (header, separator).
    progress
        Where the builder notes the last row it has yielded.
    """

    collection: Collection
    user: Principal | None
    settlement_id: int | None = None
    batch: int = 5_000
    after: int | None = None
    progress: Progress = dataclasses.field(default_factory=Progress, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "collection", for_export(self.collection))

    def select(self, columns: Sequence[ColumnElement[Any]]) -> Select[Any]:
        """``SELECT columns`` over these rows, in ``id`` order."""
        table = self.collection.table
        statement = select(*columns).where(self.collection.visible(self.user))
        if self.settlement_id is not None:
            statement = statement.where(settlement_condition(self.collection, self.settlement_id))
        if self.after is not None:
            statement = statement.where(table.c.id > bindparam(None, self.after, type_=BigInteger))
        return statement.order_by(table.c.id)


def batches(conn: Connection, statement: Select[Any], size: int) -> Iterator[Sequence[Any]]:
    """The statement's rows, ``size`` at a time, from a server-side cursor."""
    result = conn.execute(statement.execution_options(stream_results=True, max_row_buffer=size))
    try:
        while rows := result.fetchmany(size):
            yield rows
    finally:
        result.close()
