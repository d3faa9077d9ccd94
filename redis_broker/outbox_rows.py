"""Writing outbox rows: each in the transaction of the change it describes.

``store_one`` writes one row beside a save (``"delivery": "outbox"``), in the same
transaction; ``store`` writes many at once (``outbox.deliver`` when Redis cannot take
events). Inside ``atomic()`` on PostgreSQL or SQLite a transaction's rows wait and go in
together before the commit (``_TransactionRows``): on PostgreSQL a row INSERTed on its own
costs about as much as the save itself (bench/model_events.py --parts). ``outbox.py``
owns what happens to the rows after: the order they leave in, and the relay.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from time import time_ns
from typing import Any, cast

from django.db import router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from .commit_buffer import CommitBuffer
from .models import OutboxEvent

logger = logging.getLogger("redis_broker.outbox")

#: (stream, encoded entry fields) - an event ready to publish or to store.
Event = tuple[str, dict[str, str]]


def store(events: Sequence[Event], using: str | None = None) -> None:
    """Write ``events`` to the outbox in order, in one INSERT, on database ``using``."""
    db = using or router.db_for_write(OutboxEvent)
    OutboxEvent.objects.using(db).bulk_create(
        [OutboxEvent(stream=stream, fields=fields) for stream, fields in events]
    )


def store_one(event: Event, connection: BaseDatabaseWrapper) -> None:
    """Write one outbox row on ``connection``, inside whatever transaction is open there.

    ``outbox`` delivery does this on every save. Inside ``atomic()`` on PostgreSQL or
    SQLite, while nothing observes queries (no ``execute_wrapper``, no query logging as
    under ``DEBUG`` or ``assertNumQueries``), the row waits in the transaction's
    ``_TransactionRows`` and goes in with the transaction's other rows, in one
    statement, just before the commit or before any statement that could see it.
    Otherwise it is written at once. Either way it commits or rolls back with the change.
    """
    if (
        connection.in_atomic_block
        and connection.vendor in _DEFERRING_VENDORS
        and not connection.queries_logged
    ):
        pending = _rows_for(connection)
        if pending.unobserved():
            pending.add((event[0], event[1], _created_at(connection)))
            return
    _write_one(event, connection)


def _write_one(event: Event, connection: BaseDatabaseWrapper) -> None:
    """INSERT one outbox row now, past the model layer.

    An ORM ``save()`` would double the cost of a small model's save, so the values are
    adapted with the backend's own adapters. On SQLite, where Python work rather than a
    network round trip is the cost of a statement, it also skips Django's cursor wrapper
    whenever nothing observes queries, which halves the cost of the INSERT.
    """
    stream, fields = event
    params = [stream, connection.ops.adapt_json_value(fields, None), _created_at(connection), 0, ""]
    raw = connection.connection
    # Speed (bench/model_events.py, outbox ratio): SQLite's raw INSERT, past the cursor wrapper.
    if (
        connection.vendor == "sqlite"
        and raw is not None
        and not connection.execute_wrappers
        and not connection.queries_logged
    ):
        with connection.wrap_database_errors:
            raw.execute(_insert_sql_for(connection, "?"), params)
        return
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql_for(connection), params)


_ROW_FIELDS = ("stream", "fields", "created_at", "attempts", "last_error")

# Speed (bench/model_events.py, outbox ratio): the INSERT is built once per vendor, not per save.
_insert_sql: dict[tuple[str, str], str] = {}  # (vendor, placeholder) -> INSERT statement


def _insert_sql_for(connection: BaseDatabaseWrapper, placeholder: str = "%s") -> str:
    """Return the INSERT of one outbox row for ``connection``'s backend, built once."""
    sql = _insert_sql.get((connection.vendor, placeholder))
    if sql is None:
        placeholders = ", ".join([placeholder] * len(_ROW_FIELDS))
        sql = f"INSERT INTO {_table_columns(connection)} VALUES ({placeholders})"
        _insert_sql[connection.vendor, placeholder] = sql
    return sql


def _table_columns(connection: BaseDatabaseWrapper) -> str:
    """Return the outbox table and its ``_ROW_FIELDS`` columns, quoted: ``t ("a", "b")``."""
    meta, quote = OutboxEvent._meta, connection.ops.quote_name
    column = {f.name: str(f.column) for f in meta.concrete_fields}
    return f"{quote(meta.db_table)} ({', '.join(quote(column[name]) for name in _ROW_FIELDS)})"


# Speed (bench/model_events.py, outbox ratio): a burst of saves adapts the time once.
_clock: tuple[str, int, Any] = ("", -1, None)  # vendor, millisecond, adapted value


def _created_at(connection: BaseDatabaseWrapper) -> Any:
    """Return the current time adapted for ``connection``, worked out once a millisecond."""
    global _clock
    millis = time_ns() // 1_000_000
    vendor, at, value = _clock
    if at != millis or vendor != connection.vendor:
        value = connection.ops.adapt_datetimefield_value(timezone.now())
        _clock = (connection.vendor, millis, value)
    return value


# --- Rows that wait for their transaction's commit ----------------------------------

#: Where a transaction's rows wait and go in together (tested on both); elsewhere every
#: row is written at once. Speed (bench/model_events.py --parts): on PostgreSQL a row
#: INSERTed on its own costs about as much as the save; written together, a tenth.
_DEFERRING_VENDORS = frozenset({"postgresql", "sqlite"})

#: Rows per INSERT, and the most rows that wait: a huge transaction's rows go in by the
#: thousand, so they never pile up in memory.
_ROWS_PER_INSERT = 1000

#: A row waiting for its transaction: stream, encoded entry fields, adapted created_at.
_Row = tuple[str, dict[str, str], Any]

#: Statements that can see outbox rows only by naming the table, and RELEASE SAVEPOINT,
#: which changes nothing for them: these run with rows still waiting.
_BLIND = ("SELECT", "INSERT", "UPDATE", "DELETE", "RELEASE")

_TRANSACTION_ROWS_ATTR = "_redis_broker_outbox_rows"


class _TransactionRows:
    """The outbox rows of one connection's open transaction that are not written yet.

    Rows wait in a ``CommitBuffer``, whose markers drop them when the transaction rolls
    back, and go in together (a COPY with psycopg 3, else a multi-row INSERT; at most
    ``_ROWS_PER_INSERT`` wait) at the first of:

    * the commit. Django commits through ``connection.commit()`` (the outermost
      ``atomic()`` and ``transaction.commit()`` alike); it is wrapped, once per
      connection, so the rows go in just before the COMMIT, or the commit fails with
      them;
    * a statement that could see them: one naming the outbox table, or anything but
      plain DML and savepoint release (``SAVEPOINT``, ``SET``, ``LOCK``, DDL, ...). An
      ``execute_wrapper`` looks at each statement while rows wait.

    A SAVEPOINT writes the waiting rows first, so the rows still waiting always belong
    to the innermost savepoint: a ``ROLLBACK TO SAVEPOINT`` (``atomic()``'s or
    ``transaction.savepoint_rollback()``'s) undoes all of them, and they are dropped once
    it succeeded. So every query that can look finds a row in the outbox from the
    moment its save returns, as if it had been INSERTed then.
    """

    __slots__ = (
        *("connection", "buffer", "table", "wrapper", "added", "copies"),
        *("_wrapped", "_writing"),
    )

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.buffer: CommitBuffer[_Row] = CommitBuffer(connection, self._after_commit)
        self.table = str(OutboxEvent._meta.db_table).lower()
        self.wrapper = self.before_statement  # one bound method: identity for remove()
        self.added = 0  # rows added since the last write (some may have been dropped)
        # psycopg 3 (not psycopg2) offers COPY FROM STDIN as a cursor method.
        driver = getattr(getattr(connection, "Database", None), "__name__", "")
        self.copies = connection.vendor == "postgresql" and driver == "psycopg"
        self._wrapped = False
        self._writing = False
        commit = connection.commit

        def commit_with_outbox_rows() -> None:
            self.write()
            commit()

        connection.commit = commit_with_outbox_rows  # type: ignore[method-assign]

    def unobserved(self) -> bool:
        """Return True unless someone else's ``execute_wrapper`` watches the connection."""
        wrappers = self.connection.execute_wrappers
        return not wrappers or (len(wrappers) == 1 and wrappers[0] is self.wrapper)

    def add(self, row: _Row) -> None:
        """Keep ``row`` until the commit or a statement that could see it."""
        if self.added >= _ROWS_PER_INSERT:
            self.write()
        self.buffer.add(row)
        self.added += 1
        if not self._wrapped:
            # First in the list, so outermost: a user's wrapper sees our INSERT as a query.
            self.connection.execute_wrappers.insert(0, self.wrapper)
            self._wrapped = True

    def before_statement(
        self, execute: Any, sql: Any, params: Any, many: bool, context: Any
    ) -> Any:
        """``execute_wrapper``: write the waiting rows first if ``sql`` could see them."""
        if self._writing:  # our own INSERT
            return execute(sql, params, many, context)
        head = sql.lstrip()[:8].upper() if isinstance(sql, str) else ""
        if head == "ROLLBACK":
            result = execute(sql, params, many, context)
            self.discard()  # it undid everything they were written after, see above
            return result
        if not head.startswith(_BLIND) or self.table in sql.lower():
            self.write()
        return execute(sql, params, many, context)

    def write(self) -> None:
        """Write the waiting rows whose work is still alive, together, and forget them."""
        rows = self.buffer.pending()
        if rows:
            self._insert(rows)
        # Only now: should the INSERT fail, the rows still wait (SQLite's transaction
        # survives a failed statement; PostgreSQL's must roll back and drop them).
        self.discard()

    def discard(self) -> None:
        """Forget the waiting rows and stop looking at statements until the next row."""
        self.buffer.clear()
        self.added = 0
        if self._wrapped:
            self._wrapped = False
            with contextlib.suppress(ValueError):  # someone emptied the list
                self.connection.execute_wrappers.remove(self.wrapper)

    def _after_commit(self, rows: list[_Row]) -> None:
        """The buffer's post-commit flush: rows the commit wrapper did not see, if any.

        Only a commit past ``connection.commit()`` (or ``captureOnCommitCallbacks(
        execute=True)`` in a test, which commits nothing) leaves rows here; they are
        written now rather than lost.
        """
        if not self.connection.in_atomic_block:
            logger.warning(
                "%d outbox row(s) were written after their transaction committed: the "
                "commit bypassed connection.commit()",
                len(rows),
            )
        self._insert(rows)

    def _insert(self, rows: Sequence[_Row]) -> None:
        self._writing = True
        try:
            # Speed (bench/model_events.py, outbox ratio): COPY takes a row in a third of
            # the time of a multi-row INSERT. Query observers see no COPY: they get the
            # INSERT.
            if self.copies and self.unobserved() and not self.connection.queries_logged:
                _copy_rows(self.connection, rows)
            else:
                _insert_rows(self.connection, rows)
        finally:
            self._writing = False


def _rows_for(connection: BaseDatabaseWrapper) -> _TransactionRows:
    """Return the connection's waiting outbox rows, set up on first use."""
    # Speed (bench/model_events.py, outbox ratio): a plain attribute, the cheapest lookup.
    pending: _TransactionRows | None = connection.__dict__.get(_TRANSACTION_ROWS_ATTR)
    if pending is None:
        pending = _TransactionRows(connection)
        setattr(connection, _TRANSACTION_ROWS_ATTR, pending)
    return pending


def _insert_rows(connection: BaseDatabaseWrapper, rows: Sequence[_Row]) -> None:
    """INSERT ``rows`` through Django's cursor, ``_ROWS_PER_INSERT`` at most a statement."""
    meta = OutboxEvent._meta
    fields = [meta.get_field(name) for name in ("stream", "fields", "created_at")]
    size = min(connection.ops.bulk_batch_size(fields, rows) or 1, _ROWS_PER_INSERT)
    head = _insert_sql_for(connection).partition(" VALUES ")[0]
    # attempts and last_error are the same for every new row: literals, not parameters.
    one = "(%s, %s, %s, 0, '')"
    adapt_json = connection.ops.adapt_json_value
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            params: list[Any] = []
            for stream, entry, created_at in chunk:
                params += (stream, adapt_json(entry, None), created_at)
            cursor.execute(f"{head} VALUES {', '.join([one] * len(chunk))}", params)


def _copy_rows(connection: BaseDatabaseWrapper, rows: Sequence[_Row]) -> None:
    """Write ``rows`` with PostgreSQL's COPY FROM STDIN (psycopg 3), in one round trip."""
    with connection.cursor() as cursor, connection.wrap_database_errors:
        copying = cast(Any, cursor).copy(f"COPY {_table_columns(connection)} FROM STDIN")
        with copying as copy:
            for stream, entry, created_at in rows:
                copy.write_row((stream, json.dumps(entry), created_at, 0, ""))
