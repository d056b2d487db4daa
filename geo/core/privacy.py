"""Privacy rules for aggregate output: the one place that decides what a caller may see.

Enumeration data belongs to the community.  Analyses therefore follow three
rules, and every analysis applies them through this module:

1. **Who sees raw counts.**  Callers with role ``mapper`` or higher see every
   count as computed.  Anonymous callers and ``viewer`` tokens get
   *suppressed* output (:func:`sees_raw_counts`).
2. **Small counts.**  In suppressed output any count below :data:`MIN_COUNT`
   (k = 5, zero included) becomes ``null`` and its name is listed in the
   response's ``suppressed`` member.  A value derived from a count (a share, a
   density, a mean household size, people) is suppressed with its base count,
   so it cannot be used to work the count back out.  Where a breakdown (counts
   by use, by type, by settlement) would leave exactly one cell suppressed, the
   next smallest cell is suppressed as well, so the hidden cell cannot be
   recovered by subtracting the others from the shown total.
3. **No per-household data.**  Analyses aggregate households (count, sum of
   members) and never return :data:`PERSONAL_HOUSEHOLD_FIELDS` or any row of
   the households table.  Per-structure output (``?f=geojson``) is for
   ``planner`` and above only (:func:`sees_features`) and carries only
   :data:`STRUCTURE_OUTPUT_FIELDS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from geo.core.auth import role_at_least

__all__ = [
    "MIN_COUNT",
    "PERSONAL_HOUSEHOLD_FIELDS",
    "RAW_COUNT_ROLE",
    "FEATURE_ROLE",
    "STRUCTURE_OUTPUT_FIELDS",
    "Suppressor",
    "Visibility",
    "sees_features",
    "sees_raw_counts",
]


class Visibility(StrEnum):
    """Who may see an owned record (a trace): the one list of visibilities.

    ``private``: its owner and admins; ``community``: any signed-in user;
    ``public``: anyone, anonymous callers included.

    >>> [v.value for v in Visibility]
    ['private', 'community', 'public']
    """

    PRIVATE = "private"
    COMMUNITY = "community"
    PUBLIC = "public"


MIN_COUNT = 5
"""Counts below this are suppressed for callers without raw access (k-anonymity threshold)."""

RAW_COUNT_ROLE = "mapper"
"""The lowest role that sees counts unsuppressed."""

FEATURE_ROLE = "planner"
"""The lowest role that gets per-structure analysis output."""

PERSONAL_HOUSEHOLD_FIELDS = frozenset({"head_name", "phone"})
"""Household fields that identify a person; never part of any analysis output."""

STRUCTURE_OUTPUT_FIELDS: tuple[str, ...] = (
    "structure_number",
    "use",
    "wall_material",
    "roof_material",
    "storeys",
    "households",
)
"""Structure columns that per-structure analysis output may carry."""

assert not PERSONAL_HOUSEHOLD_FIELDS & set(STRUCTURE_OUTPUT_FIELDS)


def sees_raw_counts(role: str | None) -> bool:
    """Whether a caller with ``role`` (None = anonymous) sees small counts as they are.

    >>> sees_raw_counts(None), sees_raw_counts("viewer"), sees_raw_counts("mapper")
    (False, False, True)
    """
    return role is not None and role_at_least(role, RAW_COUNT_ROLE)


def sees_features(role: str | None) -> bool:
    """Whether a caller may get per-structure analysis output (``?f=geojson``).

    >>> sees_features("enumerator"), sees_features("planner")
    (False, True)
    """
    return role is not None and role_at_least(role, FEATURE_ROLE)


def _small(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value < MIN_COUNT


class Suppressor:
    """Applies the small-count rules to one response.

    When ``active`` is false (a caller with raw access) every method returns
    its input unchanged.  Names of suppressed values accumulate in
    :attr:`suppressed`, in the order they were hidden, without repeats.

    Parameters
    ----------
    active
        Whether to suppress (see :func:`sees_raw_counts`).

    Examples
    --------
    >>> s = Suppressor(active=True)
    >>> s.counts({"structures": 12, "households": 3}, "")
    {'structures': 12, 'households': None}
    >>> s.derived({"people": 14, "mean_household_size": 4.7}, base="households", prefix="")
    {'people': None, 'mean_household_size': None}
    >>> s.suppressed
    ['households', 'people', 'mean_household_size']
    >>> s.breakdown({"residential": 40, "business": 7, "toilet": 2}, "structures_by_use")
    {'residential': 40, 'business': None, 'toilet': None}
    """

    def __init__(self, *, active: bool) -> None:
        self.active = active
        self.suppressed: list[str] = []
        self._hidden: set[str] = set()

    def _hide(self, name: str) -> None:
        if name not in self._hidden:
            self._hidden.add(name)
            self.suppressed.append(name)

    def is_hidden(self, name: str) -> bool:
        """Whether the value called ``name`` has been suppressed in this response."""
        return name in self._hidden

    def counts(self, values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """Suppress each small count of ``values`` (names get ``prefix`` in front)."""
        out = dict(values)
        if not self.active:
            return out
        for key, value in values.items():
            if _small(value):
                out[key] = None
                self._hide(prefix + key)
        return out

    def derived(self, values: Mapping[str, Any], *, base: str, prefix: str) -> dict[str, Any]:
        """Suppress every value of ``values`` when the count named ``base`` is suppressed."""
        out = dict(values)
        if not self.active or not self.is_hidden(prefix + base):
            return out
        for key in values:
            out[key] = None
            self._hide(prefix + key)
        return out

    def breakdown(self, values: Mapping[str, Any], name: str) -> dict[str, Any]:
        """Suppress small cells of a ``{key: count}`` breakdown, with one secondary cell.

        Hidden cells are named ``<name>.<key>``.
        """
        keys = list(values)
        mask = self.mask([values[key] for key in keys])
        out = dict(values)
        for key, hide in zip(keys, mask, strict=True):
            if hide:
                out[key] = None
                self._hide(f"{name}.{key}")
        return out

    def rows(
        self, rows: Sequence[Mapping[str, Any]], fields: Sequence[str], name: str
    ) -> list[dict[str, Any]]:
        """Suppress ``fields`` of a list of rows, each field as one group across rows.

        Hidden values are named ``<name>[<index>].<field>``.

        >>> s = Suppressor(active=True)
        >>> s.rows([{"id": 1, "n": 30}, {"id": 2, "n": 2}, {"id": 3, "n": 8}], ["n"], "by")
        [{'id': 1, 'n': 30}, {'id': 2, 'n': None}, {'id': 3, 'n': None}]
        >>> s.suppressed
        ['by[1].n', 'by[2].n']
        """
        out = [dict(row) for row in rows]
        for field in fields:
            for index, hide in enumerate(self.mask([row.get(field) for row in rows])):
                if hide:
                    out[index][field] = None
                    self._hide(f"{name}[{index}].{field}")
        return out

    def mask(self, values: Sequence[Any]) -> list[bool]:
        """Which of a group of counts to hide: the small ones, plus one more if only one is.

        >>> Suppressor(active=True).mask([9, 3, 6, 12])
        [False, True, True, False]
        >>> Suppressor(active=False).mask([9, 3])
        [False, False]
        """
        if not self.active:
            return [False] * len(values)
        hide = [_small(value) for value in values]
        if sum(hide) == 1 and len(values) > 1:
            shown = [(v, i) for i, v in enumerate(values) if not hide[i] and v is not None]
            if shown:
                hide[min(shown)[1]] = True
        return hide

    def note(self, name: str) -> None:
        """Record that the caller hid ``name`` itself (e.g. a value derived from two counts)."""
        if self.active:
            self._hide(name)
