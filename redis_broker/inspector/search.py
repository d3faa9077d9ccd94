"""Search within a stream: by entry id, event id, type, or a substring of the payload.

A stream has no index but its entry ids, so a search by anything else reads entries.
It reads them inside Redis: one Lua script per chunk of ``SEARCH_CHUNK`` entries
(``XREVRANGE``, newest first) compares one field of each entry (``event_id`` or
``type`` for equality, ``data`` or ``error`` with a plain ``string.find``) and returns
only the matches, so the entries never cross the network. Redis is busy a few
milliseconds per chunk, and other clients' commands run between chunks.

Each request scans at most ``window`` entries (``SEARCH_WINDOW`` by default, never more
than ``MAX_SEARCH_WINDOW``), stops once it has ``limit`` matches, and returns where it
stopped: "Search older" continues from there (an exclusive cursor, as the stream page's
pager). Measured by ``bench/admin.py``: about 0.4 million entries per second
scanned on Redis 7.0 (the cost is ``XREVRANGE`` building Lua tables, not the
comparison), so the default window answers in about a quarter of a second and a whole
1,000,000-entry stream in about 2.5 s.

An entry id needs no scan: ``XRANGE id id`` finds it at once, wherever it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from .. import wire
from ..connection import LuaScript
from ..naming import prefixed
from .queries import Entry, KeyMissing, decode_for_display, now_ms

#: Entries compared per Lua call: ~4 ms of Redis time each (``bench/admin.py`` measured
#: 1,000 to 10,000 within 10 % of each other per entry; smaller chunks block less).
SEARCH_CHUNK = 2000
#: Entries one search request scans by default before it offers "Search older".
SEARCH_WINDOW = 100_000
#: Most entries one request may scan (the form's largest window).
MAX_SEARCH_WINDOW = 1_000_000
#: Matches shown per request.
SEARCH_LIMIT = 50

#: What a search compares: an entry id (no scan), or one field of each entry.
SearchBy = Literal["id", "event_id", "type", "payload", "error"]
#: (field compared, exact match?) per way of searching.
_FIELDS: dict[str, tuple[str, bool]] = {
    "event_id": (wire.EVENT_ID, True),
    "type": (wire.TYPE, True),
    "payload": (wire.DATA, False),
    "error": (wire.ERROR, False),
}

# KEYS[1] stream; ARGV: max (exclusive "(id" cursor or "+"), count, field, needle,
# "eq" or "sub", most matches wanted, "ids" to return ids without fields.
# Returns {last id scanned, entries scanned, 1 when the stream's start was reached,
# then id, fields (or id alone) per match}.
_SCAN = LuaScript(
    """
local count = tonumber(ARGV[2])
local rows = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', count)
local field, needle, exact = ARGV[3], ARGV[4], ARGV[5] == 'eq'
local want, ids_only = tonumber(ARGV[6]), ARGV[7] == 'ids'
local out = {'', 0, 0}
local found = 0
for i = 1, #rows do
  local id, f = rows[i][1], rows[i][2]
  out[1] = id
  out[2] = i
  for j = 1, #f, 2 do
    if f[j] == field then
      local v = f[j + 1]
      if (exact and v == needle) or (not exact and string.find(v, needle, 1, true)) then
        out[#out + 1] = id
        if not ids_only then out[#out + 1] = f end
        found = found + 1
        if found >= want then
          if i == #rows and #rows < count then out[3] = 1 end
          return out
        end
      end
      break
    end
  end
end
if #rows < count then out[3] = 1 end
return out
"""
)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """What one search request found, newest first, and where to continue."""

    entries: list[Entry]
    scanned: int  # entries compared by this request
    older: str | None  # "Search older" cursor: the last entry scanned; None at the start
    window: int  # the most entries this request could scan

    @property
    def window_full(self) -> bool:
        """Return True when the request stopped because it scanned its whole window."""
        return self.older is not None and self.scanned >= self.window


def _scan(
    client: redis.Redis,
    key: str,
    *,
    by: SearchBy,
    needle: str,
    before: str | None,
    limit: int,
    window: int,
    ids_only: bool,
) -> tuple[list[tuple[str, list[bytes]]], int, str | None]:
    """Run the chunked scan; return the matches (id, flat fields), entries scanned, cursor."""
    field, exact = _FIELDS[by]
    matches: list[tuple[str, list[bytes]]] = []
    scanned = 0
    cursor = f"({before}" if before else "+"
    last: str | None = before
    while scanned < window and len(matches) < limit:
        count = min(SEARCH_CHUNK, window - scanned)
        reply = _SCAN.run(
            client,
            [key],
            [
                cursor,
                count,
                field,
                needle,
                "eq" if exact else "sub",
                limit - len(matches),
                "ids" if ids_only else "fields",
            ],
        )
        last_id, chunk_scanned, at_start, rest = reply[0], int(reply[1]), reply[2], reply[3:]
        scanned += chunk_scanned
        if chunk_scanned:
            last = wire.reply_text(last_id, "replace")
            cursor = f"({last}"
        step = 1 if ids_only else 2
        for n in range(0, len(rest), step):
            matches.append(
                (wire.reply_text(rest[n], "replace"), [] if ids_only else list(rest[n + 1]))
            )
        if at_start:
            return matches, scanned, None
    return matches, scanned, last


def search_entries(
    client: redis.Redis,
    *,
    prefix: str,
    name: str,
    by: SearchBy,
    needle: str,
    before: str | None = None,
    limit: int = SEARCH_LIMIT,
    window: int = SEARCH_WINDOW,
) -> SearchResult:
    """Return the entries of stream ``name`` whose ``by`` matches ``needle``, newest first.

    ``event_id`` and ``type`` must equal ``needle``; ``payload`` (the ``data`` field's
    JSON text as stored) and ``error`` (a dead letter's) must contain it, case included.
    ``id`` reads that one entry. The scan starts below ``before`` (exclusive), stops
    after ``window`` entries (at most ``MAX_SEARCH_WINDOW``) or ``limit`` matches (one
    for an event id).
    Raises ``KeyMissing`` when the key holds no stream.
    """
    key = prefixed(prefix, name)
    if wire.reply_text(client.type(key), "replace") != "stream":
        raise KeyMissing(f"There is no stream {name!r}.", name=name)
    window = max(1, min(window, MAX_SEARCH_WINDOW))
    now = now_ms()
    if by == "id":
        rows: Any = client.xrange(key, min=needle, max=needle, count=1)
        entries = [decode_for_display(wire.reply_text(i, "replace"), f, now=now) for i, f in rows]
        return SearchResult(entries=entries, scanned=len(rows), older=None, window=window)
    if by == "event_id":
        # An event id is unique, but for the copies a requeue appends: stop at the newest
        # one, rather than read the rest of the window for more ("Search older" goes on).
        limit = 1
    matches, scanned, older = _scan(
        client, key, by=by, needle=needle, before=before, limit=limit, window=window, ids_only=False
    )
    if older is not None and not client.xrevrange(key, max=f"({older}", min="-", count=1):
        older = None  # it stopped on the oldest entry: nothing is left to search
    entries = [
        decode_for_display(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)), now=now)
        for entry_id, flat in matches
    ]
    return SearchResult(entries=entries, scanned=scanned, older=older, window=window)


@dataclass(frozen=True, slots=True)
class Matching:
    """The ids a bulk action acts on, oldest first, and whether they are all there are."""

    ids: list[str]
    scanned: int
    complete: bool  # False: the limit or the scan window cut the list short


def matching_ids(
    client: redis.Redis,
    *,
    prefix: str,
    name: str,
    by: SearchBy | None,
    needle: str,
    limit: int,
    window: int = MAX_SEARCH_WINDOW,
) -> Matching:
    """Return the ids of the entries a search matches (all of them when ``by`` is None).

    At most ``limit`` ids, oldest first (the order a requeue keeps). Without a search,
    one ``XRANGE - + COUNT limit+1``; with one, the Lua scan returning ids only.
    """
    key = prefixed(prefix, name)
    if wire.reply_text(client.type(key), "replace") != "stream":
        raise KeyMissing(f"There is no stream {name!r}.", name=name)
    rows: Any
    if by is None:
        rows = client.xrange(key, count=limit + 1)
        ids = [wire.reply_text(entry_id, "replace") for entry_id, _ in rows]
        return Matching(ids=ids[:limit], scanned=len(rows), complete=len(rows) <= limit)
    if by == "id":
        rows = client.xrange(key, min=needle, max=needle, count=1)
        return Matching(ids=[needle] if rows else [], scanned=len(rows), complete=True)
    found, scanned, older = _scan(
        client,
        key,
        by=by,
        needle=needle,
        before=None,
        limit=limit + 1,
        window=window,
        ids_only=True,
    )
    # The scan went newest first: past the limit, the newest ``limit`` matches are acted on.
    ids = sorted((entry_id for entry_id, _ in found[:limit]), key=wire.entry_id_key)
    return Matching(ids=ids, scanned=scanned, complete=older is None and len(found) <= limit)


def chunks(ids: Sequence[str], size: int) -> list[Sequence[str]]:
    """Return ``ids`` cut into runs of at most ``size`` (one pipeline each)."""
    return [ids[n : n + size] for n in range(0, len(ids), size)]
