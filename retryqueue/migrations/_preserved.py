"""What partitioning must carry from the old queue table to the new one by hand.

``CREATE TABLE ... (LIKE ...)`` copies columns, defaults, checks and column comments, but
not the primary key's name, the table's comment, nor the views built on the table (a view
is bound to the table itself, so the old table could not be dropped under it).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

__all__ = ["View", "dependent_views", "primary_key_and_comment", "sql_string"]


def primary_key_and_comment(connection: Connection, table: str) -> tuple[str, str | None]:
    """``table``'s primary key name as the database has it, and the table's comment.

    ``CREATE TABLE ... LIKE`` copies neither, and the name differs between databases
    (``daz_retry_queue_pkey`` from the reference script, ``pk_daz_retry_queue`` from an
    earlier rq0001 not yet at rq0005).
    """
    row = connection.execute(
        text(
            "SELECT (SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t) "
            "AND contype = 'p'), obj_description(to_regclass(:t), 'pg_class')"
        ),
        {"t": table},
    ).one()
    return str(row[0] or f"{table}_pkey"), row[1]


@dataclass(frozen=True, slots=True)
class View:
    """A view over the queue (the reference script's monitoring views), to rebuild."""

    name: str
    definition: str
    comment: str | None
    grants: tuple[str, ...]

    def recreate(self, connection: Connection) -> None:
        """Create the view again (on the new table), with its comment and grants."""
        connection.execute(text(f"CREATE VIEW {self.name} AS {self.definition}"))
        if self.comment is not None:
            comment = sql_string(connection, self.comment)
            connection.execute(text(f"COMMENT ON VIEW {self.name} IS {comment}"))
        for statement in self.grants:
            connection.execute(text(statement))


def dependent_views(connection: Connection, table: str) -> list[View]:
    """The plain views that read ``table``, with what it takes to rebuild them."""
    rows = connection.execute(
        text(
            "SELECT DISTINCT v.oid::regclass::text, pg_get_viewdef(v.oid), "
            "obj_description(v.oid, 'pg_class') "
            "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
            "JOIN pg_class v ON v.oid = r.ev_class "
            "WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = to_regclass(:t) "
            "AND v.relkind = 'v' AND v.oid <> to_regclass(:t)"
        ),
        {"t": table},
    ).all()
    views = []
    for name, definition, comment in rows:
        grants = connection.execute(
            text(
                "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
                "ELSE a.grantee::regrole::text END, a.privilege_type "
                "FROM pg_class c, aclexplode(c.relacl) a "
                "WHERE c.oid = to_regclass(:v) AND a.grantee <> c.relowner"
            ),
            {"v": name},
        ).all()
        statements = tuple(f"GRANT {what} ON {name} TO {who}" for who, what in grants)
        views.append(View(name, str(definition).rstrip().rstrip(";"), comment, statements))
    return views


def sql_string(connection: Connection, value: str) -> str:
    """``value`` as a quoted SQL string literal (for COMMENT ON, which takes no parameter)."""
    return str(connection.execute(text("SELECT quote_literal(:v)"), {"v": value}).scalar_one())
