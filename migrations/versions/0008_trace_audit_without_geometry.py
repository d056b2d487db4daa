"""History rows of traces are built without touching the trace's line.

``makazi_audit`` turns each changed row into JSON with ``to_jsonb`` and then
drops the geometry of traces; for a trace of a million points that cast alone
builds megabytes of JSON twice per write.  Traces get their own audit function
that names their columns (everything but ``geom``), so history costs the same
for a 10-point and a 1,000,000-point trace.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TRACE_COLUMNS = (
    "id",
    "name",
    "owner",
    "visibility",
    "settlement_id",
    "content_sha256",
    "points",
    "tracks",
    "segments",
    "routes",
    "waypoints",
    "length_m",
    "duration_s",
    "started_at",
    "ended_at",
    "stats",
    "dropped",
    "warnings",
    "version",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
    "deleted_at",
    "deleted_by",
)
PAIRS = ", ".join(f"'{column}', t.{column}" for column in TRACE_COLUMNS)

UPGRADE = f"""
CREATE FUNCTION makazi_trace_json(t traces) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object({PAIRS})
$$;

CREATE FUNCTION makazi_audit_traces() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('makazi.audit', true) = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT 'traces', n.id, n.version, 'create', makazi_actor(),
               makazi_diff(NULL, j.row_json), j.row_json
        FROM new_rows n CROSS JOIN LATERAL (SELECT makazi_trace_json(n) AS row_json) j;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT 'traces', n.id, n.version,
               CASE WHEN o.deleted_at IS NULL AND n.deleted_at IS NOT NULL THEN 'delete'
                    WHEN o.deleted_at IS NOT NULL AND n.deleted_at IS NULL THEN 'restore'
                    ELSE 'update' END,
               makazi_actor(), d.changes, makazi_trace_json(n)
        FROM new_rows n
        JOIN old_rows o ON o.id = n.id
        CROSS JOIN LATERAL (
            SELECT makazi_diff(makazi_trace_json(o), makazi_trace_json(n)) AS changes
        ) d
        WHERE d.changes <> '{{}}'::jsonb;
    ELSE
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT 'traces', o.id, o.version + 1, 'purge', makazi_actor(),
               makazi_diff(makazi_trace_json(o), NULL), NULL
        FROM old_rows o;
    END IF;
    RETURN NULL;
END
$$;
"""


def _retarget(function: str) -> str:
    return f"""
DROP TRIGGER traces_audit_insert ON traces;
DROP TRIGGER traces_audit_update ON traces;
DROP TRIGGER traces_audit_delete ON traces;
CREATE TRIGGER traces_audit_insert AFTER INSERT ON traces
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}();
CREATE TRIGGER traces_audit_update AFTER UPDATE ON traces
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();
CREATE TRIGGER traces_audit_delete AFTER DELETE ON traces
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}();
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(_retarget("makazi_audit_traces"))


def downgrade() -> None:
    op.execute(_retarget("makazi_audit"))
    op.execute("DROP FUNCTION makazi_audit_traces(); DROP FUNCTION makazi_trace_json(traces);")
