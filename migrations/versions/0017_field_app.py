"""The field app: each structure's position accuracy, and the edit conflicts it reports.

* ``structures.position_accuracy_m``: how far off (metres, the phone's reported
  accuracy) the position was when the structure was placed; null when it was
  drawn or imported.  The structures' ``touch`` trigger lists its columns, so it
  is recreated with the new one (a corrected accuracy bumps the version).
* ``edit_conflicts``: an edit the field app made offline that the server
  refused with 412 (someone changed the feature meanwhile), kept field by field
  (``fields``: ``{name: {base, theirs, mine}}`` for each field where ``mine``
  differs from ``base``) with the whole base / theirs / mine properties, who
  made it, and how it was settled (``resolution``: ``mine`` or ``theirs``).
  A reviewer reads them at ``GET /conflicts``; nothing is merged by the server.

Revision ID: 0017
Revises: 0016 (the lead rechains it on merge)
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TOUCH_COLUMNS = (
    "settlement_id, structure_number, use, wall_material, roof_material, storeys, geom, "
    "deleted_at, review_state, review_note"
)

UPGRADE = f"""
ALTER TABLE structures
    ADD COLUMN position_accuracy_m double precision
        CONSTRAINT structures_position_accuracy_m_check
        CHECK (position_accuracy_m >= 0 AND position_accuracy_m <= 100000);

DROP TRIGGER structures_touch ON structures;
CREATE TRIGGER structures_touch BEFORE UPDATE OF {TOUCH_COLUMNS}, position_accuracy_m
    ON structures FOR EACH ROW EXECUTE FUNCTION makazi_touch();

CREATE TABLE edit_conflicts (
    id bigserial PRIMARY KEY,
    collection text NOT NULL,
    feature_id bigint NOT NULL,
    base_version integer NOT NULL CHECK (base_version >= 1),
    theirs_version integer NOT NULL CHECK (theirs_version >= 1),
    base jsonb NOT NULL CHECK (jsonb_typeof(base) = 'object'),
    theirs jsonb NOT NULL CHECK (jsonb_typeof(theirs) = 'object'),
    mine jsonb NOT NULL CHECK (jsonb_typeof(mine) = 'object'),
    fields jsonb NOT NULL CHECK (jsonb_typeof(fields) = 'object'),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    resolution text CHECK (resolution IN ('mine', 'theirs')),
    resolved_by text,
    resolved_at timestamptz
);
CREATE INDEX edit_conflicts_feature_idx ON edit_conflicts (collection, feature_id);
CREATE INDEX edit_conflicts_created_idx ON edit_conflicts (created_at);
"""

DOWNGRADE = f"""
DROP TABLE edit_conflicts;
DROP TRIGGER structures_touch ON structures;
CREATE TRIGGER structures_touch BEFORE UPDATE OF {TOUCH_COLUMNS}
    ON structures FOR EACH ROW EXECUTE FUNCTION makazi_touch();
ALTER TABLE structures DROP COLUMN position_accuracy_m;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
