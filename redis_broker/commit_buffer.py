"""A savepoint-aware commit buffer: items kept until their transaction commits, dropped on rollback.

``CommitBuffer(connection, flush)`` collects items added while ``connection`` is inside
a transaction and hands them, in the order they were added, to ``flush`` once the work
they belong to is committed; items added inside a savepoint that is rolled back are
never flushed. It knows nothing of what the items are or where they go: its creator
passes the ``flush`` callable (``model_events`` buffers model events this way).

Django already discards ``on_commit`` callbacks registered inside a savepoint that is
rolled back; the buffer leans on exactly that. Its items are grouped by the savepoint
they were added in, each group with its own ``on_commit`` callback (a "marker"), so when
a savepoint is rolled back its group's marker disappears with it and the group is
dropped. When a savepoint is released its group joins the enclosing one, so a
transaction usually ends with a single group and a single ``flush``, however many items
(or savepoints, as ``get_or_create`` makes) it had.

A buffer can also be emptied before the commit: ``pending()`` returns the items whose
work is still alive and ``clear()`` forgets them (the outbox writes its rows just before
the commit this way, see ``outbox``); the markers then flush nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from django.db.backends.base.base import BaseDatabaseWrapper

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Group(Generic[T]):
    """Items added while one savepoint (or the bare transaction) was innermost."""

    stack: tuple[str, ...]  # the open savepoints when the group was opened
    marker: Callable[[], None] | None = None
    index: int = 0  # where the marker sat in connection.run_on_commit
    items: list[T] = field(default_factory=list)


class CommitBuffer(Generic[T]):
    """The items of one connection's open transaction, grouped by savepoint.

    ``add(item)`` buffers an item; at commit, each surviving group's items are passed to
    ``flush`` (a list, oldest first). Use one buffer per connection for the connection's
    lifetime: it follows every transaction and savepoint opened on it.

    Invariant after ``_reconcile``: every group's marker is still registered, and the
    groups' stacks form a chain (each the prefix of the next), oldest first, which is
    also the order their markers run in at commit.
    """

    __slots__ = ("connection", "flush", "groups")

    def __init__(self, connection: BaseDatabaseWrapper, flush: Callable[[list[T]], None]) -> None:
        self.connection = connection
        self.flush = flush
        self.groups: list[_Group[T]] = []

    def add(self, item: T) -> None:
        """Buffer ``item`` until the transaction (and every savepoint around it) commits."""
        # atomic(savepoint=False) pushes None: such a block cannot be rolled back on its
        # own (a failure dooms the whole transaction), so it is not a level of its own.
        ids = self.connection.savepoint_ids
        stack = tuple(sid for sid in ids if sid is not None) if ids else ()
        groups = self.groups
        if groups:
            top = groups[-1]
            hooks = self.connection.run_on_commit
            # Speed (bench/model_events.py, on_commit ratio): the common case, inline:
            # same level, marker where we left it.
            if top.stack == stack and (
                (top.index < len(hooks) and hooks[top.index][1] is top.marker) or self._alive(top)
            ):
                top.items.append(item)
                return
            self._reconcile(stack)
            if groups and groups[-1].stack == stack:
                groups[-1].items.append(item)
                return
        group = _Group(stack=stack, items=[item])
        group.marker = functools.partial(self._committed, group)
        group.index = len(self.connection.run_on_commit)
        self.connection.on_commit(group.marker)
        groups.append(group)

    def pending(self) -> list[T]:
        """Return the items whose work is still alive, oldest first, and keep them.

        Items of a rolled-back transaction or savepoint are gone. Pair with ``clear()``
        once the items are safely elsewhere, so a failure in between loses nothing.
        """
        groups = self.groups
        if not groups:
            return []
        groups[:] = [group for group in groups if self._alive(group)]
        # The groups form a chain of ever deeper savepoints, and an item goes to an outer
        # group only after the deeper ones were folded into it: the chain order is the
        # order the items were added in.
        return [item for group in groups for item in group.items]

    def clear(self) -> None:
        """Forget every buffered item: handed over before the commit, or undone."""
        for group in self.groups:
            group.items = []

    def _alive(self, group: _Group[T]) -> bool:
        """Return True while the group's marker is registered (nothing around it rolled back)."""
        hooks = self.connection.run_on_commit
        if group.index < len(hooks) and hooks[group.index][1] is group.marker:
            return True
        # Something before it was discarded (or it was): look for it.
        return any(hook[1] is group.marker for hook in reversed(hooks))

    def _reconcile(self, stack: tuple[str, ...]) -> None:
        """Drop rolled-back groups and fold released savepoints' groups into their parents."""
        groups = self.groups
        groups[:] = [group for group in groups if self._alive(group)]
        while groups:
            top = groups[-1]
            if stack[: len(top.stack)] == top.stack:
                return  # its savepoint is still open
            # Its innermost savepoint was left and, since the marker is alive, released:
            # from now on the group shares the fate of the enclosing level.
            groups.pop()
            parent = top.stack[:-1]
            if groups and groups[-1].stack == parent:
                groups[-1].items.extend(top.items)
                top.items = []  # its marker still runs at commit; it must flush nothing
            else:
                top.stack = parent
                groups.append(top)

    def _committed(self, group: _Group[T]) -> None:
        """Marker callback: the group's work is committed; flush its items."""
        if group in self.groups:
            self.groups.remove(group)
        items, group.items = group.items, []
        if items:  # a released savepoint's group handed its items to its parent
            self.flush(items)
