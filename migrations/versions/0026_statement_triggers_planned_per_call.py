"""Statement triggers that read transition tables are planned for each call's rows.

PL/pgSQL keeps the plan of each statement in a function for the life of the
database session, made the first time the function runs, and the size of a
transition table (``new_rows``, ``old_rows``) is part of that plan.  A session
whose first write touched one row kept a one-row plan for every later bulk
write, and pooled connections live long:

* ``makazi_audit`` on UPDATE joins ``new_rows`` to ``old_rows`` by id.  Planned
  for one row, the join is a nested loop over both tuple stores: quadratic.  A
  bulk update of 20,000 rows after a single-row update took 26 s in a bare test.
* ``makazi_count_households`` (0019) counts each touched structure's households.
  Planned when ``households`` looked empty, it scans the table once per
  structure: a demo load in the test suite now and then ran past the 30 s
  statement timeout.

Both statements now run through ``EXECUTE``, which plans every call with the
transition tables' real sizes (a fraction of a millisecond per statement, not
per row).  The INSERT and DELETE branches of the audit read one transition
table without a join; they keep their cached plans.

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def _sibling(name: str) -> ModuleType:
    """An earlier revision's module (their file names start with digits)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _audit(planned_per_call: bool) -> str:
    """``makazi_audit`` as 0024 left it, its UPDATE branch run through ``EXECUTE`` or not."""
    text = str(_sibling("0024_history_creates_without_changes")._AUDIT).format(
        create_changes="NULL"
    )
    start = text.index("    ELSIF TG_OP = 'UPDATE' THEN\n") + len(
        "    ELSIF TG_OP = 'UPDATE' THEN\n"
    )
    end = text.index("    ELSE\n", start)
    statement = text[start:end].rstrip().removesuffix(";")
    if not planned_per_call:
        return text
    dynamic = statement.replace("TG_TABLE_NAME", "$1")
    return (
        f"{text[:start]}        EXECUTE $q${dynamic.strip()}$q$ USING TG_TABLE_NAME;\n{text[end:]}"
    )


def _count_households(planned_per_call: bool) -> str:
    """``makazi_count_households`` as 0019 left it, its UPDATEs run through ``EXECUTE`` or not."""
    text = str(_sibling("0019_households_count_plan").NEW)
    if not planned_per_call:
        return text
    head, tail = "        UPDATE structures s", "IS DISTINCT FROM c.n;"
    assert text.count(head) == text.count(tail) == 3
    return text.replace(head, "        EXECUTE $q$UPDATE structures s").replace(
        tail, "IS DISTINCT FROM c.n$q$;"
    )


def upgrade() -> None:
    op.execute(_audit(planned_per_call=True))
    op.execute(_count_households(planned_per_call=True))


def downgrade() -> None:
    op.execute(_audit(planned_per_call=False))
    op.execute(_count_households(planned_per_call=False))
