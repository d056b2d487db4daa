"""Cheaper bulk inserts: row triggers skipped when they have nothing to do; lz4 history.

Measured on an import of 100,000 footprints (bench/RESULTS.md "imports"):

* ``makazi_stamp_insert`` only fills ``created_by``/``updated_by`` when they are
  missing and ``makazi_locate`` only places a feature whose ``settlement_id`` is
  missing, yet each was called (a PL/pgSQL call) for every row.  Their triggers
  now carry those conditions as ``WHEN`` clauses, so PostgreSQL skips the call
  when a statement gives the values itself, as the import's merge does; what
  every other insert or update gets is unchanged.
* A ``feature_history`` row of a polygon feature is about 1.8 kB (snapshot and
  changes each hold the whole feature), so PostgreSQL compresses its JSON on
  nearly every row; ``lz4`` does that several times faster than the default
  ``pglz`` for about a quarter more bytes.  Only values written from now on use
  it; a server built without lz4 keeps ``pglz``.

Revision ID: 0020
Revises: 0019 (the lead rechains it on merge)
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

#: (trigger function, events, condition under which it has something to do)
_TRIGGERS = (
    ("makazi_stamp_insert", "INSERT", "NEW.created_by IS NULL OR NEW.updated_by IS NULL"),
    ("makazi_locate", "INSERT OR UPDATE OF geom, settlement_id", "NEW.settlement_id IS NULL"),
)


def _recreate(function: str, events: str, when: str) -> None:
    """Recreate every trigger calling ``function`` (same name) with ``when`` as its WHEN."""
    clause = f"WHEN ({when}) " if when else ""
    op.execute(
        f"""
        DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT t.tgname, c.relname FROM pg_trigger t
                     JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid
                     WHERE p.proname = '{function}' AND NOT t.tgisinternal
            LOOP
                EXECUTE format('DROP TRIGGER %I ON %I', r.tgname, r.relname);
                EXECUTE format('CREATE TRIGGER %I BEFORE {events} ON %I FOR EACH ROW '
                               '{clause}EXECUTE FUNCTION {function}()', r.tgname, r.relname);
            END LOOP;
        END
        $$
        """
    )


def _compress_with(method: str) -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
                       AND '{method}' = ANY (enumvals)) THEN
                ALTER TABLE feature_history ALTER COLUMN changes SET COMPRESSION {method},
                    ALTER COLUMN snapshot SET COMPRESSION {method};
            END IF;
        END
        $$
        """
    )


def upgrade() -> None:
    for function, events, when in _TRIGGERS:
        _recreate(function, events, when)
    _compress_with("lz4")


def downgrade() -> None:
    for function, events, _when in _TRIGGERS:
        _recreate(function, events, "")
    _compress_with("pglz")
