"""One live token per name, and a notification when a token is revoked.

``makazi token revoke NAME`` names the token to cut off, so two live tokens
may not share a name: earlier duplicates keep working under ``<name>-<id>``.
Revoking a token (setting ``revoked_at``, from the CLI, the admin API or SQL)
sends ``NOTIFY makazi_tokens, '<name>'`` at commit, so every app process drops
the tokens it had cached at once.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE api_tokens t SET name = t.name || '-' || t.id
        FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY id) AS n
              FROM api_tokens WHERE revoked_at IS NULL) d
        WHERE d.id = t.id AND d.n > 1;

        CREATE UNIQUE INDEX api_tokens_live_name_idx ON api_tokens (name)
            WHERE revoked_at IS NULL;

        CREATE FUNCTION makazi_token_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('makazi_tokens', NEW.name);
            RETURN NULL;
        END
        $$;

        CREATE TRIGGER api_tokens_revoked
            AFTER UPDATE OF revoked_at ON api_tokens
            FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
            EXECUTE FUNCTION makazi_token_revoked();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER api_tokens_revoked ON api_tokens;
        DROP FUNCTION makazi_token_revoked();
        DROP INDEX api_tokens_live_name_idx;
        """
    )
