"""Bulk imports: a job row per import, its uploaded file, and source ids on the layers.

* ``settlements``, ``structures``, ``facilities`` and ``households`` gain ``source_id`` (the
  feature's id in the file it came from, or a hash of its content) and
  ``import_id`` (the import that last wrote it; a household's source id is the
  ``KEY`` of its row in a form export's repeat group).  A live row's ``source_id`` is
  unique per table, so importing the same file again matches what is there.
* ``imports`` holds one row per import, synchronous or queued: who started it,
  its options, status, progress, the worker's heartbeat and the final report.
  Workers claim queued rows (and running rows whose heartbeat went stale) with
  ``SELECT ... FOR UPDATE SKIP LOCKED``.
* ``import_files`` keeps a queued import's upload in 1 MB chunks, so any worker
  process can run it and a restart loses nothing; the chunks go once it is done.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

LAYERS = ("settlements", "structures", "facilities", "households")


def upgrade() -> None:
    for table in LAYERS:
        op.execute(
            f"""
            ALTER TABLE {table} ADD COLUMN source_id text, ADD COLUMN import_id bigint;
            CREATE UNIQUE INDEX {table}_source_id_idx ON {table} (source_id)
                WHERE deleted_at IS NULL AND source_id IS NOT NULL;
            """
        )
    op.execute(
        """
        CREATE TABLE imports (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            owner text NOT NULL,
            collection text NOT NULL,
            filename text,
            size_bytes bigint NOT NULL,
            sha256 text NOT NULL,
            options jsonb NOT NULL,
            status text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
            progress real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
            report jsonb,
            attempts integer NOT NULL DEFAULT 0,
            worker text,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            heartbeat_at timestamptz,
            finished_at timestamptz
        );
        CREATE INDEX imports_pending_idx ON imports (id) WHERE status IN ('queued', 'running');

        CREATE TABLE import_files (
            import_id bigint NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
            seq integer NOT NULL,
            chunk bytea NOT NULL,
            PRIMARY KEY (import_id, seq)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE import_files; DROP TABLE imports;")
    for table in LAYERS:
        op.execute(
            f"DROP INDEX {table}_source_id_idx; "
            f"ALTER TABLE {table} DROP COLUMN source_id, DROP COLUMN import_id;"
        )
