"""History ``create`` rows keep the feature once: ``changes`` derived from ``snapshot``.

A ``create`` row's ``changes`` is ``makazi_diff(NULL, snapshot)``: every key
of the snapshot but the unchanging ones, ``from`` null.  Storing both wrote each
new feature twice, geometry (as GeoJSON) and all: about 1.8 kB a polygon, most
of an import's merge (bench/RESULTS.md "imports").  From now on the audit
trigger (``makazi_audit``) and the import's own history rows
(:func:`geo.imports.history.insert_audited`) leave ``changes`` NULL on a
``create`` row, and readers take ``makazi_history_changes(changes, snapshot)``,
which gives the stored value when there is one (every older row, every update,
delete, restore and purge) and the derived one otherwise, so what the history
answers is the same as before.  A check keeps NULL to ``create`` rows that have
a snapshot (``NOT VALID``: the rows before it were all NOT NULL).  Traces and
settlement profiles have their own audit functions and still store ``changes``;
the readers accept both.

Revision ID: 0024
Revises: 0023 (the lead rechains it on merge)
"""

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

#: ``makazi_audit`` (migration 0002) with the ``changes`` of its create rows as a slot.
_AUDIT = """
CREATE OR REPLACE FUNCTION makazi_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('makazi.audit', true) = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT TG_TABLE_NAME, n.id, n.version, 'create', makazi_actor(),
               {create_changes}, makazi_row(TG_TABLE_NAME, to_jsonb(n))
        FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT TG_TABLE_NAME, n.id, n.version,
               CASE WHEN o.deleted_at IS NULL AND n.deleted_at IS NOT NULL THEN 'delete'
                    WHEN o.deleted_at IS NOT NULL AND n.deleted_at IS NULL THEN 'restore'
                    ELSE 'update' END,
               makazi_actor(), d.changes, makazi_row(TG_TABLE_NAME, to_jsonb(n))
        FROM new_rows n
        JOIN old_rows o ON o.id = n.id
        CROSS JOIN LATERAL (
            SELECT makazi_diff(makazi_row(TG_TABLE_NAME, to_jsonb(o)),
                               makazi_row(TG_TABLE_NAME, to_jsonb(n))) AS changes
        ) d
        WHERE d.changes <> '{{}}'::jsonb;
    ELSE
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT TG_TABLE_NAME, o.id, o.version + 1, 'purge', makazi_actor(),
               makazi_diff(makazi_row(TG_TABLE_NAME, to_jsonb(o)), NULL), NULL
        FROM old_rows o;
    END IF;
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE feature_history ALTER COLUMN changes DROP NOT NULL;
        ALTER TABLE feature_history ADD CONSTRAINT feature_history_changes_stored
            CHECK (changes IS NOT NULL OR (action = 'create' AND snapshot IS NOT NULL))
            NOT VALID;
        -- a history row's changes: stored, or (a create row) every key of its snapshot
        CREATE FUNCTION makazi_history_changes(changes jsonb, snapshot jsonb) RETURNS jsonb
        LANGUAGE sql IMMUTABLE AS $$
            SELECT coalesce(changes, makazi_diff(NULL, snapshot))
        $$;
        """
    )
    op.execute(_AUDIT.format(create_changes="NULL"))


def downgrade() -> None:
    op.execute(
        _AUDIT.format(create_changes="makazi_diff(NULL, makazi_row(TG_TABLE_NAME, to_jsonb(n)))")
    )
    op.execute(
        """
        UPDATE feature_history SET changes = makazi_diff(NULL, snapshot) WHERE changes IS NULL;
        DROP FUNCTION makazi_history_changes(jsonb, jsonb);
        ALTER TABLE feature_history DROP CONSTRAINT feature_history_changes_stored;
        ALTER TABLE feature_history ALTER COLUMN changes SET NOT NULL;
        """
    )
