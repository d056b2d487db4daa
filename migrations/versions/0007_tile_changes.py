"""Per-layer change counters for the vector tile cache.

The tile cache in ``geo.tiles`` keys every tile by the change counters of the
layers drawn at its zoom, so an edit to a settlement, structure, facility or
trace makes every cached tile of that layer stale at once, without scanning
the data.  The counters are bumped by the database itself, whatever did the
write (API, import, plain SQL):

* ``makazi_tiles_note`` (statement trigger, after insert/update/delete/
  truncate on each tiled table) notes, once per transaction and table, a row
  in ``tile_changes_pending``; on ``traces`` only when a public trace is
  written, made private or deleted, since only public traces are drawn;
* ``makazi_tiles_bump`` (a deferred constraint trigger on that row) bumps the
  layer's counter at commit and removes the note.

Bumping at commit keeps the row lock on ``tile_changes`` as short as the
commit itself, so concurrent writers never queue behind each other's
transactions; and because the counter commits with the data, a reader that
sees a counter value also sees every change that value stands for.

Revision ID: 0007
Revises: 0002
"""

from alembic import op

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None

TILED_TABLES = ("settlements", "structures", "facilities", "traces")

UPGRADE = """
CREATE TABLE tile_changes (
    collection text PRIMARY KEY,
    counter bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tile_changes (collection)
VALUES ('settlements'), ('structures'), ('facilities'), ('traces');

CREATE TABLE tile_changes_pending (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection text NOT NULL
);

-- Note, once per transaction and layer, that the layer's counter must move.
CREATE FUNCTION makazi_tiles_mark(layer text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    flag text := 'makazi.tiles_pending_' || layer;
BEGIN
    IF coalesce(current_setting(flag, true), '') = 'on' THEN
        RETURN;
    END IF;
    PERFORM set_config(flag, 'on', true);
    INSERT INTO tile_changes_pending (collection) VALUES (layer);
END
$$;

CREATE FUNCTION makazi_tiles_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM makazi_tiles_mark(TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- Only public traces are drawn: private and community uploads leave the tiles alone.
CREATE FUNCTION makazi_tiles_note_traces() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    drawn boolean := TG_OP = 'TRUNCATE';
BEGIN
    -- each transition table exists only for the events that have it
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        drawn := EXISTS (SELECT 1 FROM new_rows WHERE visibility = 'public');
    END IF;
    IF NOT drawn AND TG_OP IN ('UPDATE', 'DELETE') THEN
        drawn := EXISTS (SELECT 1 FROM old_rows WHERE visibility = 'public');
    END IF;
    IF drawn THEN
        PERFORM makazi_tiles_mark('traces');
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION makazi_tiles_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('makazi.tiles_pending_' || NEW.collection, '', true);
    UPDATE tile_changes SET counter = counter + 1, changed_at = now()
    WHERE collection = NEW.collection;
    DELETE FROM tile_changes_pending WHERE id = NEW.id;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER tile_changes_bump AFTER INSERT ON tile_changes_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION makazi_tiles_bump();
"""


def _note_triggers(table: str) -> str:
    if table == "traces":
        return """
CREATE TRIGGER traces_tiles_insert AFTER INSERT ON traces
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note_traces();
CREATE TRIGGER traces_tiles_update AFTER UPDATE ON traces
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note_traces();
CREATE TRIGGER traces_tiles_delete AFTER DELETE ON traces
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note_traces();
CREATE TRIGGER traces_tiles_truncate AFTER TRUNCATE ON traces
    FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note_traces();
"""
    return f"""
CREATE TRIGGER {table}_tiles_note AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note();
CREATE TRIGGER {table}_tiles_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note();
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute("".join(_note_triggers(table) for table in TILED_TABLES))


def downgrade() -> None:
    for table in TILED_TABLES:
        for suffix in ("note", "insert", "update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_tiles_{suffix} ON {table}")
    op.execute(
        """
        DROP TABLE IF EXISTS tile_changes_pending, tile_changes;
        DROP FUNCTION IF EXISTS makazi_tiles_bump(), makazi_tiles_note(),
            makazi_tiles_note_traces(), makazi_tiles_mark(text);
        """
    )
