"""Community verification of structures and households; settlement profiles.

* ``structures`` and ``households`` gain ``review_state`` (``collected`` by
  default, ``read_out``, ``verified``, ``disputed``) and ``review_note``.  The
  audit trigger writes every column of a row, so history records both with no
  change to it; the structures' ``touch`` trigger lists its columns, so it is
  recreated with the two new ones (a review move bumps the version).
* ``settlement_profiles``: one row per settlement holding the Know Your City
  fields the data cannot compute (``fields`` JSONB), versioned and stamped by
  the same triggers as features and audited into ``feature_history`` under the
  collection ``settlement_profiles`` (``feature_id`` = the settlement's id).

Revision ID: 0014
Revises: 0013 (the lead rechains it after 0013 on merge)
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

STATES = "'collected', 'read_out', 'verified', 'disputed'"

STRUCTURE_TOUCH_COLUMNS = (
    "settlement_id, structure_number, use, wall_material, roof_material, storeys, geom, deleted_at"
)

UPGRADE = f"""
ALTER TABLE structures
    ADD COLUMN review_state text NOT NULL DEFAULT 'collected'
        CONSTRAINT structures_review_state_check CHECK (review_state IN ({STATES})),
    ADD COLUMN review_note text CONSTRAINT structures_review_note_check
        CHECK (length(review_note) <= 2000);
ALTER TABLE households
    ADD COLUMN review_state text NOT NULL DEFAULT 'collected'
        CONSTRAINT households_review_state_check CHECK (review_state IN ({STATES})),
    ADD COLUMN review_note text CONSTRAINT households_review_note_check
        CHECK (length(review_note) <= 2000);
CREATE INDEX structures_review_state_idx ON structures (settlement_id, review_state)
    WHERE deleted_at IS NULL;
CREATE INDEX households_review_state_idx ON households (review_state)
    WHERE deleted_at IS NULL;

DROP TRIGGER structures_touch ON structures;
CREATE TRIGGER structures_touch BEFORE UPDATE OF {STRUCTURE_TOUCH_COLUMNS},
    review_state, review_note ON structures
    FOR EACH ROW EXECUTE FUNCTION makazi_touch();

CREATE TABLE settlement_profiles (
    settlement_id bigint PRIMARY KEY REFERENCES settlements (id) ON DELETE CASCADE,
    fields jsonb NOT NULL DEFAULT '{{}}'::jsonb CHECK (jsonb_typeof(fields) = 'object'),
    version integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text,
    deleted_at timestamptz,
    deleted_by text
);

CREATE FUNCTION makazi_audit_profiles() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('makazi.audit', true) = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT 'settlement_profiles', n.settlement_id, n.version, 'create', makazi_actor(),
               makazi_diff(NULL, to_jsonb(n)), to_jsonb(n)
        FROM new_rows n;
    ELSE
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     changes, snapshot)
        SELECT 'settlement_profiles', n.settlement_id, n.version, 'update', makazi_actor(),
               d.changes, to_jsonb(n)
        FROM new_rows n
        JOIN old_rows o ON o.settlement_id = n.settlement_id
        CROSS JOIN LATERAL (SELECT makazi_diff(to_jsonb(o), to_jsonb(n)) AS changes) d
        WHERE d.changes <> '{{}}'::jsonb;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER settlement_profiles_stamp BEFORE INSERT ON settlement_profiles
    FOR EACH ROW EXECUTE FUNCTION makazi_stamp_insert();
CREATE TRIGGER settlement_profiles_touch BEFORE UPDATE ON settlement_profiles
    FOR EACH ROW EXECUTE FUNCTION makazi_touch();
CREATE TRIGGER settlement_profiles_audit_insert AFTER INSERT ON settlement_profiles
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION makazi_audit_profiles();
CREATE TRIGGER settlement_profiles_audit_update AFTER UPDATE ON settlement_profiles
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION makazi_audit_profiles();

CREATE INDEX feature_history_changed_idx ON feature_history (collection, changed_at);
"""

DOWNGRADE = f"""
DROP INDEX feature_history_changed_idx;
DROP TABLE settlement_profiles;
DROP FUNCTION makazi_audit_profiles();
DROP TRIGGER structures_touch ON structures;
CREATE TRIGGER structures_touch BEFORE UPDATE OF {STRUCTURE_TOUCH_COLUMNS} ON structures
    FOR EACH ROW EXECUTE FUNCTION makazi_touch();
DROP INDEX households_review_state_idx;
DROP INDEX structures_review_state_idx;
ALTER TABLE households DROP COLUMN review_note, DROP COLUMN review_state;
ALTER TABLE structures DROP COLUMN review_note, DROP COLUMN review_state;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
