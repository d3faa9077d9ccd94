"""``outbox`` delivery inside ``atomic()``: a transaction's rows wait and go in together.

On PostgreSQL and SQLite the rows of a transaction are written in one INSERT just
before it commits, or earlier, before any statement that could see them (one naming the
outbox table, a SAVEPOINT, anything not plain DML). These tests pin what must not
change with that: the row is in the outbox when ``atomic()`` returns, it commits or
rolls back with its save, a rolled-back savepoint takes only its own rows, and the relay
delivers the rows as before. They use ``django_db(transaction=True)`` because the rows
are written at a real commit (the default test wrapper never commits), and they read
the outbox from a second connection, which sees only committed rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from redis_broker import outbox_rows, wire
from redis_broker.models import OutboxEvent
from redis_broker.outbox import OutboxRelay, store
from tests.helpers import closing_db
from tests.testapp.models import Invoice, Order

from .helpers import model_events, read_stream

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def committed_numbers() -> list[str]:
    """Return the invoice numbers of the committed outbox rows, read on another connection."""

    def read() -> list[str]:
        rows = OutboxEvent.objects.order_by("id").values_list("fields", flat=True)
        return [wire.decode_entry(fields).data["fields"]["number"] for fields in rows]

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(closing_db(read)).result()


@pytest.fixture
def inserts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Spy on the real write of waiting rows: record how many rows each statement carried."""
    calls: list[int] = []
    real: Callable[..., None] = outbox_rows._TransactionRows._insert

    def spy(self: Any, rows: Any) -> None:
        calls.append(len(rows))
        real(self, rows)

    monkeypatch.setattr(outbox_rows._TransactionRows, "_insert", spy)
    yield calls


@pytest.fixture
def refusing_outbox() -> Iterator[None]:
    """Make the database refuse outbox rows for the stream ``refused`` (a trigger)."""
    table = OutboxEvent._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION test_refuse_outbox_row() RETURNS trigger AS $$ BEGIN "
                "IF NEW.stream = 'refused' THEN RAISE EXCEPTION 'outbox row refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER test_refuse_outbox_row BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_outbox_row()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER test_refuse_outbox_row BEFORE INSERT ON {table} "
                "WHEN NEW.stream = 'refused' BEGIN SELECT RAISE(ABORT, 'outbox row refused'); END"
            )
    try:
        with model_events(testapp__Invoice={"stream": "refused", "delivery": "outbox"}):
            yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER test_refuse_outbox_row ON {table}")
                cursor.execute("DROP FUNCTION test_refuse_outbox_row()")
            else:
                cursor.execute("DROP TRIGGER test_refuse_outbox_row")


def test_rows_are_committed_when_atomic_returns(
    inserts: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Tests that once atomic() returns, its rows are committed, all in one statement."""
    with caplog.at_level(logging.WARNING, logger="redis_broker.outbox"):
        with transaction.atomic():
            for number in ("INV-1", "INV-2", "INV-3"):
                Invoice.objects.create(number=number)
            assert committed_numbers() == []
        assert committed_numbers() == ["INV-1", "INV-2", "INV-3"]
    assert inserts == [3]
    assert caplog.records == []  # written before the COMMIT, not after it


def test_a_query_naming_the_outbox_sees_rows_saved_before_it() -> None:
    """Tests that a row is visible in its transaction as soon as its save returns."""
    with transaction.atomic():
        Invoice.objects.create(number="INV-1")
        assert OutboxEvent.objects.count() == 1
        Invoice.objects.create(number="INV-2")
        with connection.cursor() as cursor:  # raw SQL, unquoted, in capitals
            cursor.execute(f"SELECT COUNT(*) FROM {OutboxEvent._meta.db_table.upper()}")
            assert cursor.fetchone() == (2,)
        Invoice.objects.create(number="INV-3")
        assert [row.fields["type"] for row in OutboxEvent.objects.iterator(chunk_size=1)] == [
            "testapp.invoice.created"
        ] * 3


def test_query_observers_arriving_after_the_saves_see_the_rows_insert() -> None:
    """Tests that rows written while queries are captured go in as a visible INSERT."""
    with transaction.atomic():
        Invoice.objects.create(number="INV-1")
        Invoice.objects.create(number="INV-2")
        with CaptureQueriesContext(connection) as captured:
            assert OutboxEvent.objects.count() == 2
    table = OutboxEvent._meta.db_table
    writes = [q["sql"] for q in captured.captured_queries if f'INTO "{table}"' in q["sql"]]
    assert len(writes) == 1 and writes[0].startswith("INSERT")


def test_rows_of_an_inner_atomic_that_returned_commit_with_the_outer_one() -> None:
    """Tests that a released savepoint's rows are in the outbox and commit with their parent."""
    with transaction.atomic():
        with transaction.atomic():
            Invoice.objects.create(number="INV-1")
        assert list(OutboxEvent.objects.values_list("stream", flat=True)) == ["billing.invoices"]
        Invoice.objects.create(number="INV-2")
    assert committed_numbers() == ["INV-1", "INV-2"]


def test_rolled_back_transaction_leaves_no_row_now_or_later() -> None:
    """Tests that a rollback drops waiting rows, and no later transaction writes them."""
    with pytest.raises(RuntimeError), transaction.atomic():
        Invoice.objects.create(number="INV-PHANTOM")
        raise RuntimeError("abort")
    with transaction.atomic():
        Order.objects.create(status="other work")  # on_commit delivery: no outbox row
    with transaction.atomic():
        Invoice.objects.create(number="INV-REAL")
    assert committed_numbers() == ["INV-REAL"]
    assert list(Invoice.objects.values_list("number", flat=True)) == ["INV-REAL"]


def test_savepoint_rollback_drops_only_its_own_rows() -> None:
    """Tests that an inner atomic() that raised takes its rows and leaves the others."""
    with transaction.atomic():
        Invoice.objects.create(number="INV-BEFORE")
        with pytest.raises(RuntimeError), transaction.atomic():
            Invoice.objects.create(number="INV-UNDONE")
            raise RuntimeError("abort the savepoint")
        Invoice.objects.create(number="INV-AFTER")
    assert committed_numbers() == ["INV-BEFORE", "INV-AFTER"]


def test_rows_written_inside_a_savepoint_are_undone_with_it_and_only_they() -> None:
    """Tests that a row saved before a savepoint survives its rollback, though written late.

    The outer row waits until the SAVEPOINT statement and goes in before it; the inner
    row is written inside the savepoint by the query that looks at the outbox, and the
    rollback takes it out again.
    """
    with transaction.atomic():
        Invoice.objects.create(number="INV-OUTER")
        with pytest.raises(RuntimeError), transaction.atomic():
            Invoice.objects.create(number="INV-INNER")
            assert OutboxEvent.objects.count() == 2
            raise RuntimeError("abort the savepoint")
        assert OutboxEvent.objects.count() == 1
    assert committed_numbers() == ["INV-OUTER"]


#: Django 6.1 renamed ``transaction.savepoint()`` to ``savepoint_create()`` (the old name
#: warns); both create the savepoint on the connection, which is what the outbox watches.
savepoint_create = getattr(transaction, "savepoint_create", None) or transaction.savepoint


def test_manual_savepoint_rollback_drops_only_the_rows_saved_after_it() -> None:
    """Tests transaction.savepoint_rollback(), which Django's on_commit bookkeeping ignores."""
    with transaction.atomic():
        Invoice.objects.create(number="INV-KEPT")
        undone = savepoint_create()
        Invoice.objects.create(number="INV-UNDONE")
        transaction.savepoint_rollback(undone)
        released = savepoint_create()
        Invoice.objects.create(number="INV-RELEASED")
        transaction.savepoint_commit(released)
    assert committed_numbers() == ["INV-KEPT", "INV-RELEASED"]


def test_failed_statement_in_a_savepoint_keeps_the_transactions_other_rows() -> None:
    """Tests the get_or_create pattern: an IntegrityError caught at a savepoint loses nothing.

    On PostgreSQL the failed INSERT aborts the transaction until the ROLLBACK TO
    SAVEPOINT, which must therefore go through untouched.
    """
    with transaction.atomic():
        first = Invoice.objects.create(number="INV-1")
        with pytest.raises(IntegrityError), transaction.atomic():
            Invoice.objects.create(number="INV-2")
            Invoice.objects.create(pk=first.pk, number="INV-DUPLICATE")
        Invoice.objects.create(number="INV-3")
    assert committed_numbers() == ["INV-1", "INV-3"]
    assert sorted(Invoice.objects.values_list("number", flat=True)) == ["INV-1", "INV-3"]


def test_a_huge_transactions_rows_go_in_by_the_thousand(inserts: list[int]) -> None:
    """Tests that rows never pile up in memory: every thousandth save writes them."""
    with transaction.atomic():
        for i in range(1001):
            Invoice.objects.create(number=f"INV-{i}")
        assert inserts == [1000]
    assert inserts == [1000, 1]
    assert OutboxEvent.objects.count() == 1001


def test_save_and_row_fail_together_when_the_database_refuses_the_row(
    refusing_outbox: None,
) -> None:
    """Tests that a row the database refuses at commit time fails the commit, save included."""
    with pytest.raises(DatabaseError, match="outbox row refused"), transaction.atomic():
        Invoice.objects.create(number="INV-REFUSED")
    assert not Invoice.objects.exists()
    assert committed_numbers() == []


def test_rows_keep_their_order_around_other_outbox_writes() -> None:
    """Tests that waiting rows go in before any other outbox row written in the transaction."""
    with transaction.atomic():
        Invoice.objects.create(number="INV-1")
        store(
            [
                (
                    "billing.invoices",
                    wire.encode_entry({"fields": {"number": "STORED"}}, type="test.stored"),
                )
            ]
        )
        Invoice.objects.create(number="INV-2")
    assert committed_numbers() == ["INV-1", "STORED", "INV-2"]


def test_manual_transaction_commit_writes_the_rows() -> None:
    """Tests that transaction.commit() after set_autocommit(False) writes the rows first."""
    transaction.set_autocommit(False)
    try:
        with transaction.atomic():
            Invoice.objects.create(number="INV-MANUAL")
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert committed_numbers() == ["INV-MANUAL"]


def test_save_outside_atomic_writes_its_row_before_save_returns() -> None:
    """Tests that in autocommit the row is committed by the time save() returns."""
    Invoice.objects.create(number="INV-AUTOCOMMIT")
    assert committed_numbers() == ["INV-AUTOCOMMIT"]


def test_relay_delivers_rows_written_together_one_entry_each_in_order(
    redis_client: redis.Redis,
) -> None:
    """Tests that the relay sends batched rows as entries identical to single-row ones."""
    with transaction.atomic():
        invoices = [Invoice.objects.create(number=f"INV-{i}") for i in range(3)]
        invoices[0].number = "INV-0-PAID"
        invoices[0].save()
    Invoice.objects.create(number="INV-SOLO")  # autocommit: written on its own
    event_ids = [
        fields["event_id"] for fields in OutboxEvent.objects.values_list("fields", flat=True)
    ]
    assert OutboxRelay().drain() == 5
    entries = read_stream(redis_client, "billing.invoices")
    assert [(e.type, e.data["fields"]["number"]) for e in entries] == [
        ("testapp.invoice.created", "INV-0"),
        ("testapp.invoice.created", "INV-1"),
        ("testapp.invoice.created", "INV-2"),
        ("testapp.invoice.updated", "INV-0-PAID"),
        ("testapp.invoice.created", "INV-SOLO"),
    ]
    assert [e.event_id for e in entries] == event_ids
    assert len(set(event_ids)) == 5
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db  # the closest mark wins: the default wrapper, never committed
def test_a_test_that_never_commits_still_sees_its_rows(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    """Tests that rows show up in a test case's rolled-back transaction, callbacks run or not."""
    with transaction.atomic():
        Invoice.objects.create(number="INV-1")
    assert OutboxEvent.objects.count() == 1
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        Invoice.objects.create(number="INV-2")
    assert (
        list(OutboxEvent.objects.values_list("fields__type", flat=True))
        == ["testapp.invoice.created"] * 2
    )
