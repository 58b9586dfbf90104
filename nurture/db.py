"""Database engine, sessions and migrations (Alembic), for SQLite and PostgreSQL."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from nurture.values import SQLITE_FUNCTIONS

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only where migrations run (`up`, `worker`, `api`, `db upgrade`, a
# brand-new store): it costs ~0.3 s, more than a read command's whole budget.

MIGRATIONS = Path(__file__).parent / "migrations"
REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


class SchemaMismatch(Exception):
    """The store's schema is not the one this version of nurture uses (CLI exit 1)."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while a worker writes; busy_timeout waits out short locks
    # instead of failing (activities retry anyway, but most waits are milliseconds).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # Segments read values in SQL as rules do in Python (PostgreSQL: migration 0009).
    for name, (arity, function) in SQLITE_FUNCTIONS.items():
        dbapi_connection.create_function(name, arity, function, deterministic=True)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision (idempotent). One process at a time: a
    worker starting while `nurture lead add` makes a brand-new store would otherwise both
    create the tables, and one fail ("table counter already exists")."""
    from alembic import command

    get_engine(url)  # creates the SQLite folder if needed
    with _migration_lock(url):
        if current_revision(url) != head_revision():  # another process may just have done it
            command.upgrade(alembic_config(url), "head")


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """An exclusive lock across processes: a lock file beside a SQLite store, an advisory
    lock (held by its own connection) on PostgreSQL."""
    if url.startswith("sqlite"):
        import fcntl

        database = url.split("///", 1)[-1]
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a+b") as handle:
            os.chmod(handle.name, 0o600)
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})


MIGRATION_LOCK_KEY = 7_291_004_113  # pg_advisory_lock key of nurture's migrations (any fixed number)


def reclaim_erased(url: str) -> bool:
    """After an erase: rewrite the SQLite file so the erased bytes linger in no free page,
    and empty the write-ahead log that still holds the old pages. False when a reader kept
    the log from being emptied (past the busy timeout): its old pages may still hold them.
    (PostgreSQL keeps old row versions until autovacuum reuses them; see the README.)"""
    if not url.startswith("sqlite"):
        return True
    with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM")
        busy, _, _ = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    return busy == 0


def head_revision() -> str:
    """The newest migration's id, from the `revision` / `down_revision` lines of the
    migration files (the one revision no other names as its parent)."""
    return _revisions()[1]


def _revisions() -> tuple[set[str], str]:
    """Every revision of the migration files, and the head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in REVISION_LINE.findall(path.read_text()):
            parsed = ast.literal_eval(value.strip())
            if name == "revision":
                revisions.add(parsed)
            else:
                parents.update([parsed] if isinstance(parsed, str) else parsed or ())
    heads = revisions - parents
    if len(heads) != 1:
        raise SchemaMismatch(f"the migrations in {MIGRATIONS} have {len(heads)} heads; expected one")
    return revisions, heads.pop()


def current_revision(url: str) -> str | None:
    """The store's Alembic revision; None for a store without nurture's tables."""
    engine = get_engine(url)
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def ensure_schema(url: str) -> None:
    """For commands that do not migrate (all but `up`, `worker`, `api`, `db upgrade`): a
    brand-new store gets its tables, as there is nothing to migrate; a store at another
    revision is SchemaMismatch, so a read never changes a schema behind a running server."""
    (known, head), current = _revisions(), current_revision(url)
    where = url.split("@")[-1]
    if current == head:
        return
    if current is None and not inspect(get_engine(url)).get_table_names():
        upgrade(url)
        return
    if current is not None and current not in known:
        raise SchemaMismatch(f"database {where} is at schema revision {current}, newer than this nurture knows "
                             f"({head}): install the nurture that migrated it")
    raise SchemaMismatch(f"database {where} is at schema revision {current or 'none'}, this nurture "
                         f"needs {head}: run `nurture db upgrade`")
