"""A new trace's history row keeps the trace once, and the trace's JSON is inlined.

The traces' audit (``makazi_audit_traces``, migration 0008) wrote a ``create``
row's ``changes`` as ``makazi_diff(NULL, snapshot)``: the snapshot again, key by
key, as 0024 stopped doing for every other collection.  Readers already take
``makazi_history_changes(changes, snapshot)``, which derives exactly that from
the snapshot when ``changes`` is NULL, so the history answers the same.

``makazi_trace_json`` was declared ``IMMUTABLE`` although ``jsonb_build_object``
of timestamps is only ``STABLE`` (it follows the session's time zone); so
PostgreSQL never inlined it, and ran it as a function planned anew on each call,
twice per new trace.  Declared ``STABLE``, it is inlined into the trigger's
cached plan.

In one transaction, 500 single-row inserts into ``traces`` (bench database, load
about 3): 0.72 ms of audit per insert before, 0.06 ms after (0.18 ms with the
``changes`` alone).  A small GPX upload's store statement is about 3.4 ms of
server time, so about a fifth of it.

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

_OLD_INSERT = """        SELECT 'traces', n.id, n.version, 'create', makazi_actor(),
               makazi_diff(NULL, j.row_json), j.row_json
        FROM new_rows n CROSS JOIN LATERAL (SELECT makazi_trace_json(n) AS row_json) j;"""
_NEW_INSERT = """        SELECT 'traces', n.id, n.version, 'create', makazi_actor(),
               NULL, makazi_trace_json(n)
        FROM new_rows n;"""


def _replace_in_audit(old: str, new: str) -> str:
    """SQL that rewrites ``makazi_audit_traces`` (as 0008 made it) with ``old`` replaced by
    ``new`` in its body, failing when ``old`` is not there."""
    return f"""
DO $migration$
DECLARE
    definition text := pg_get_functiondef('makazi_audit_traces()'::regprocedure);
BEGIN
    IF position($old${old}$old$ IN definition) = 0 THEN
        RAISE EXCEPTION 'makazi_audit_traces is not as expected';
    END IF;
    EXECUTE replace(definition, $old${old}$old$, $new${new}$new$);
END
$migration$;
"""


def upgrade() -> None:
    op.execute("ALTER FUNCTION makazi_trace_json(traces) STABLE")
    op.execute(_replace_in_audit(_OLD_INSERT, _NEW_INSERT))


def downgrade() -> None:
    op.execute(_replace_in_audit(_NEW_INSERT, _OLD_INSERT))
    op.execute("ALTER FUNCTION makazi_trace_json(traces) IMMUTABLE")
