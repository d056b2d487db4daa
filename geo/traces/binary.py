"""Statement parameters in PostgreSQL's binary form, built by numpy.

An upload's points go to the store statement as one array per column.
psycopg builds an array parameter from a Python list element by element; here
numpy writes the array's binary form (``array_recv``'s input: a header, then
each element as its length and its bytes, a length of -1 for NULL) from the
columns at once.  The statement casts each parameter to its type
(``CAST(%(x)b AS float8[])``), so the server reads the bytes as that type.

>>> import numpy as np
>>> bytes(binary_array(np.array([1.5, 2.0]), np.array([True, False]), "float8"))[:20]
b'\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x01\\x00\\x00\\x02\\xbd\\x00\\x00\\x00\\x02\\x00\\x00\\x00\\x01'
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

__all__ = ["Binary", "binary_array", "register"]

#: Element types of the arrays sent, by name: their type ids (``pg_type.oid``).
ELEMENT_OIDS = {"int4": 23, "float8": 701, "text": 25, "jsonb": 3802, "timestamptz": 1184}
#: How numbers of each type are sent (big-endian; a time as microseconds since 2000).
NUMBER_TYPES = {"int4": ">i4", "float8": ">f8", "timestamptz": ">i8"}


class Binary(bytes):
    """A parameter already in PostgreSQL's binary form; the statement names its type."""


class _BinaryDumper(Dumper):
    """Sends :class:`Binary` as it is, in binary, its type left to the statement's cast."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def register(adapters: AdaptersMap) -> None:
    """Let ``adapters`` (a connection's) send :class:`Binary` parameters."""
    adapters.register_dumper(Binary, _BinaryDumper)


def binary_array(
    values: npt.NDArray[Any], present: npt.NDArray[np.bool_] | None, element: str
) -> Binary:
    """A one-dimensional array of ``element`` (a key of :data:`ELEMENT_OIDS`).

    Parameters
    ----------
    values
        Numbers (any byte order; a time as microseconds since 2000-01-01), or for
        ``text`` and ``jsonb`` the elements' binary form as bytes (``S``: each
        element as long as its bytes, up to numpy's trailing NUL padding).
    present
        Which elements are not NULL (all when None).
    """
    n = len(values)
    if values.dtype.kind == "S":
        width = values.itemsize
        lengths = np.char.str_len(values).astype(np.int64)
    else:
        values = values.astype(NUMBER_TYPES[element])
        width = values.dtype.itemsize
        lengths = np.full(n, width, np.int64)
    if present is not None:
        lengths[~present] = -1
    records = np.empty((n, 4 + width), np.uint8)
    records[:, :4] = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
    records[:, 4:] = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    keep = np.ones((n, 4 + width), bool)
    keep[:, 4:] = np.arange(width) < lengths[:, None]
    has_null = int(present is not None and not present.all())
    header = struct.pack("!iiiii", 1, has_null, ELEMENT_OIDS[element], n, 1)
    return Binary(header + records[keep].tobytes())
