"""Community verification: moving structures and their households through review states.

Data collected in the field is read out to the community (``read_out``) and
then ``verified``, or ``disputed`` with a note saying why.  A planner moves a
whole settlement, one block (structures whose painted number starts with the
block, see :data:`BLOCK_SQL`) or a list of structures at once; every row
moved gets its own version and history entry from the audit trigger.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, text

from geo.core.errors import InvalidInput
from geo.layers.registry import ENUMS

__all__ = ["BLOCK_SQL", "ReviewMove", "move_review_state"]

BLOCK_SQL = "substring(t.structure_number from '^(.+)[-/ ._][^-/ ._]+$')"
"""A structure ``t``'s block: its painted number up to the last separator.

``KB-04-0117`` is in block ``KB-04``; a number without a separator has no block.
"""


class ReviewMove(BaseModel):
    """``POST /settlements/{id}/review``: which rows to move, and to what state.

    Without ``block`` and ``structure_ids`` the whole settlement moves (its
    structures are those whose ``settlement_id`` is the settlement).
    """

    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="collected, read_out, verified or disputed")
    from_: list[str] | str | None = Field(
        default=None,
        alias="from",
        description="Move only rows now in this state (or one of these states)",
    )
    block: str | None = Field(
        default=None, max_length=100, description="Structure-number prefix, e.g. KB-04"
    )
    structure_ids: list[int] | None = Field(default=None, max_length=100_000)
    households: bool = Field(
        default=True, description="Move the households of the chosen structures too"
    )
    note: str | None = Field(
        default=None, max_length=2000, description="review_note; required for disputed"
    )


_MOVE = text(
    "".join(
        (
            """
WITH chosen AS MATERIALIZED (
    SELECT t.id FROM structures t
    WHERE t.settlement_id = :sid AND t.deleted_at IS NULL
      AND (CAST(:block AS text) IS NULL OR """,
            BLOCK_SQL,
            """ = :block)
      AND (CAST(:ids AS bigint[]) IS NULL OR t.id = ANY(:ids))
),
moved_structures AS (
    UPDATE structures t
    SET review_state = :to,
        review_note = CASE WHEN :to = 'disputed' THEN :note ELSE NULL END
    FROM chosen c
    WHERE t.id = c.id AND t.review_state <> :to
      AND (CAST(:from_states AS text[]) IS NULL OR t.review_state = ANY(:from_states))
    RETURNING t.id
),
moved_households AS (
    UPDATE households h
    SET review_state = :to,
        review_note = CASE WHEN :to = 'disputed' THEN :note ELSE NULL END
    FROM chosen c
    WHERE :households AND h.structure_id = c.id AND h.deleted_at IS NULL
      AND h.review_state <> :to
      AND (CAST(:from_states AS text[]) IS NULL OR h.review_state = ANY(:from_states))
    RETURNING h.id
)
SELECT (SELECT count(*) FROM chosen) AS chosen,
       (SELECT count(*) FROM moved_structures) AS structures,
       (SELECT count(*) FROM moved_households) AS households
""",
        )
    )
)

_OUTSIDE = text(
    """
SELECT i FROM unnest(CAST(:ids AS bigint[])) i
WHERE NOT EXISTS (SELECT 1 FROM structures t
                  WHERE t.id = i AND t.settlement_id = :sid AND t.deleted_at IS NULL)
ORDER BY i LIMIT 5
"""
)


def _state(value: str, field: str) -> str:
    states = ENUMS["review_state"]
    if value not in states:
        raise InvalidInput(
            f"{field} must be one of {', '.join(states)}; got {value!r}", field=field
        )
    return value


def move_review_state(conn: Connection, *, settlement_id: int, move: ReviewMove) -> dict[str, Any]:
    """Move the chosen structures (and their households) to ``move.to``; the counts moved.

    Rows already in ``move.to`` are left alone (no new version).

    Raises
    ------
    geo.core.errors.InvalidInput
        An unknown state, ``disputed`` without a note, or structure ids that
        are not live structures of the settlement (the first few named).
    """
    to = _state(move.to, "to")
    sources = [move.from_] if isinstance(move.from_, str) else move.from_
    if sources is not None:
        sources = [_state(value, "from") for value in sources]
    note = (move.note or "").strip() or None
    if to == "disputed" and note is None:
        raise InvalidInput("note: say why the rows are disputed", field="note")
    ids = sorted(set(move.structure_ids)) if move.structure_ids is not None else None
    if ids is not None:
        outside = conn.execute(_OUTSIDE, {"ids": ids, "sid": settlement_id}).scalars().all()
        if outside:
            raise InvalidInput(
                "structure_ids: not live structures of settlement "
                f"{settlement_id}: {', '.join(map(str, outside))}",
                field="structure_ids",
            )
    row = conn.execute(
        _MOVE,
        {
            "sid": settlement_id,
            "block": move.block,
            "ids": ids,
            "to": to,
            "from_states": sources,
            "note": note,
            "households": move.households,
        },
    ).one()
    return {
        "settlement_id": settlement_id,
        "to": to,
        "matched_structures": int(row.chosen),
        "structures": int(row.structures),
        "households": int(row.households),
    }
