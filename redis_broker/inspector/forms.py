"""Forms of the admin inspector: page filters (GET) and action parameters (GET to confirm,
POST to act). Every id a form accepts is checked against the entry-id syntax, so nothing
but a well-formed id ever reaches a Redis command."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from .. import wire
from ..exceptions import MalformedEntry
from .queries import STREAM_PAGE_SIZES

#: Most entries one action may name (a page holds at most 100).
MAX_IDS = 1000
PAGE_SIZES = (25, 50, 100)


def validate_entry_id(value: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is a stream entry id (``ms`` or ``ms-seq``)."""
    if not wire.is_entry_id(value):
        raise ValidationError(f"{value!r} is not a stream entry id (like 1700000000000-0).")


class EntryIdField(forms.CharField):
    """One optional stream entry id."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("max_length", 41)
        super().__init__(**kwargs)
        self.validators.append(self._validate)

    @staticmethod
    def _validate(value: str) -> None:
        if value:
            validate_entry_id(value)


class SelectionField(forms.Field):
    """The rows ticked on a list, posted as repeated hidden inputs (or checkboxes) ``ids``.

    Subclasses say what one item looks like (``is_item``) and how a missing selection is
    reported (``empty_message``: the actions send the user back to the list with it).
    """

    widget = forms.MultipleHiddenInput
    empty_message = "Select at least one entry."
    plural = "entries"

    @staticmethod
    def is_item(value: str) -> bool:
        """Return True when ``value`` is well formed (overridden)."""
        raise NotImplementedError

    def to_python(self, value: Any) -> list[str]:
        """Return the ids in order, without blanks or duplicates."""
        if not value:
            return []
        if isinstance(value, str):
            value = [value]
        seen: dict[str, None] = {}
        for item in value:
            item = str(item).strip()
            if item:
                seen[item] = None
        return list(seen)

    def validate(self, value: Any) -> None:
        """Require at least one id, each well formed, and at most ``MAX_IDS``."""
        if not value:
            raise ValidationError(self.empty_message)
        if len(value) > MAX_IDS:
            raise ValidationError(f"Select at most {MAX_IDS} {self.plural} at once.")
        for item in value:
            self.check_item(item)

    def check_item(self, value: str) -> None:
        """Raise ``ValidationError`` unless ``value`` is well formed."""
        if not self.is_item(value):
            raise ValidationError(f"{value!r} is not a valid id.")


class EntryIdsField(SelectionField):
    """A list of stream entry ids."""

    @staticmethod
    def is_item(value: str) -> bool:
        """Return True for a stream entry id."""
        return wire.is_entry_id(value)

    def check_item(self, value: str) -> None:
        """Raise ``ValidationError`` unless ``value`` is a stream entry id."""
        validate_entry_id(value)


class RowIdsField(SelectionField):
    """A list of outbox row ids (positive integers)."""

    empty_message = "Select at least one row."
    plural = "rows"

    @staticmethod
    def is_item(value: str) -> bool:
        """Return True for a row id: digits, not too long for a 64-bit key."""
        return value.isascii() and value.isdigit() and 0 < len(value) <= 19

    def clean(self, value: Any) -> list[int]:
        """Return the ids as integers, once each is checked."""
        return [int(item) for item in super().clean(value)]


def name_field(label: str, help_text: str = "") -> forms.CharField:
    """Return a field for a consumer or group name (any text Redis accepts, trimmed)."""
    return forms.CharField(label=label, max_length=200, strip=True, help_text=help_text)


class EntryFilterForm(forms.Form):
    """The stream page's filter (inclusive id range) and cursors (exclusive)."""

    start = EntryIdField(label="From id", help_text="Oldest id shown (inclusive).")
    end = EntryIdField(label="To id", help_text="Newest id shown (inclusive).")
    before = EntryIdField(widget=forms.HiddenInput)
    after = EntryIdField(widget=forms.HiddenInput)
    count = forms.TypedChoiceField(
        label="Per page",
        choices=[(n, n) for n in PAGE_SIZES],
        coerce=int,
        required=False,
        empty_value=None,
    )


class StreamPageForm(forms.Form):
    """The overview's name filter, page size and page cursor (GET).

    ``cursor`` and ``span`` are only checked for length here: what they hold is read by
    ``nodes.parse_cursor`` / ``parse_span``, against the Redis being paged. ``page`` is
    the page's number, for display only.
    """

    q = forms.CharField(label="Name contains", max_length=200, required=False, strip=True)
    count = forms.TypedChoiceField(
        label="Per page",
        choices=[(n, n) for n in STREAM_PAGE_SIZES],
        coerce=int,
        required=False,
        empty_value=None,
    )
    cursor = forms.CharField(max_length=100, required=False, widget=forms.HiddenInput)
    span = forms.CharField(max_length=2000, required=False, widget=forms.HiddenInput)
    page = forms.IntegerField(
        min_value=1, max_value=10**9, required=False, widget=forms.HiddenInput
    )


class PendingFilterForm(forms.Form):
    """The pending page's consumer filter and cursor."""

    consumer = forms.CharField(max_length=200, required=False, strip=True)
    after = EntryIdField(widget=forms.HiddenInput)
    count = forms.TypedChoiceField(
        choices=[(n, n) for n in PAGE_SIZES],
        coerce=int,
        required=False,
        empty_value=None,
    )


#: The ways to search a stream, as the search form offers them.
SEARCH_CHOICES = [
    ("event_id", "event id"),
    ("type", "type"),
    ("payload", "payload contains"),
    ("id", "entry id"),
]
#: Dead letters can also be searched by their error.
DEAD_LETTER_SEARCH_CHOICES = [*SEARCH_CHOICES[:3], ("error", "error contains"), SEARCH_CHOICES[3]]
#: The scan windows offered (entries read per request at most); the first is the default.
SEARCH_WINDOWS = (100_000, 1_000_000)


class SearchForm(forms.Form):
    """Search a stream by event id, type, payload substring or entry id (GET).

    ``before`` continues an earlier search below that entry ("Search older"). An entry
    id typed with "event id" selected is looked up as an entry id: an event id (a UUID)
    never looks like one.
    """

    q = forms.CharField(label="Find", max_length=1000, required=False, strip=False)
    by = forms.ChoiceField(label="By", choices=SEARCH_CHOICES, initial="event_id", required=False)
    window = forms.TypedChoiceField(
        label="Scan at most",
        choices=[(n, f"{n:,} entries") for n in SEARCH_WINDOWS],
        coerce=int,
        required=False,
        empty_value=None,
        help_text="The search stops there and offers to continue with older entries.",
    )
    before = EntryIdField(widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        """Trim ids (a payload substring keeps its spaces); check an entry id's syntax."""
        cleaned = super().clean() or {}
        by = cleaned.get("by") or "event_id"
        needle: str = cleaned.get("q") or ""
        if by != "payload" and by != "error":
            needle = needle.strip()
        if by == "event_id" and wire.is_entry_id(needle):
            by = "id"
        if by == "id" and needle:
            try:
                validate_entry_id(needle)
            except ValidationError as exc:
                self.add_error("q", exc)
        cleaned["by"], cleaned["q"] = by, needle
        return cleaned


class DeadLetterSearchForm(SearchForm):
    """The dead-letters page's search: the stream's ways, and the error's text."""

    by = forms.ChoiceField(
        label="By", choices=DEAD_LETTER_SEARCH_CHOICES, initial="type", required=False
    )


class BulkDeadLettersForm(forms.Form):
    """A bulk action on dead letters: all of them, or all matching a search (POST)."""

    by = forms.ChoiceField(choices=DEAD_LETTER_SEARCH_CHOICES, required=False)
    q = forms.CharField(max_length=1000, required=False, strip=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("by", "q"):
            self.fields[name].widget = forms.HiddenInput()

    def clean(self) -> dict[str, Any]:
        """Return the search (``by`` None for "all"), read as the search form reads it."""
        cleaned = super().clean() or {}
        search = DeadLetterSearchForm({"by": cleaned.get("by", ""), "q": cleaned.get("q", "")})
        if not search.is_valid():
            raise ValidationError([e for errors in search.errors.values() for e in errors])
        needle = search.cleaned_data["q"]
        cleaned["by"] = search.cleaned_data["by"] if needle else None
        cleaned["q"] = needle
        return cleaned


class ConfirmForm(forms.Form):
    """An action without parameters: the form only carries the CSRF token."""


class EntryIdsForm(forms.Form):
    """An action on selected entries (ack, delete, requeue)."""

    ids = EntryIdsField()


class OutboxRowsForm(forms.Form):
    """An action on selected outbox rows (delete, retry)."""

    ids = RowIdsField()


class ClaimForm(EntryIdsForm):
    """Claim selected pending entries for one consumer."""

    consumer = forms.CharField(
        label="Consumer",
        max_length=200,
        help_text="The consumer that will own the entries (created if it does not exist).",
        widget=forms.TextInput(attrs={"list": "rb-consumers", "autocomplete": "off"}),
    )


class TrimForm(forms.Form):
    """Trim a stream to its newest ``maxlen`` entries."""

    maxlen = forms.IntegerField(
        label="Keep the newest", min_value=0, help_text="Number of entries to keep."
    )
    approximate = forms.BooleanField(
        label="Approximate (~)",
        required=False,
        help_text="Let Redis trim whole nodes only: cheaper, may keep a few more entries.",
    )


class CreateGroupForm(forms.Form):
    """Create a consumer group on an existing stream."""

    group = name_field("Group name")
    start = forms.CharField(
        label="Start at",
        initial="$",
        max_length=41,
        help_text="$ = only new entries, 0 = the whole stream, or an entry id.",
    )

    def clean_start(self) -> str:
        """Accept ``$``, ``0`` or an entry id."""
        value: str = self.cleaned_data["start"].strip()
        if value != "$":
            validate_entry_id(value)
        return value


class SendMessageForm(forms.Form):
    """A test message: where to (a stream, or a Pub/Sub channel), its type and JSON data."""

    kind = forms.ChoiceField(
        label="Send to",
        choices=[
            ("stream", "a stream (publish: consumers handle it)"),
            ("channel", "a Pub/Sub channel (broadcast: live subscribers and browsers get it)"),
        ],
        initial="stream",
        widget=forms.RadioSelect,
    )
    name = name_field("Stream or channel", "Without KEY_PREFIX, as application code names it.")
    type = forms.CharField(
        label="Type", max_length=200, required=False, strip=True, help_text="Optional."
    )
    payload = forms.CharField(
        label="Data (JSON)",
        initial="{}",
        max_length=100_000,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "class": "vLargeTextField"}),
        help_text='Any JSON value: {"order": 42}, "hello", [1, 2], 3.',
    )

    def clean_payload(self) -> Any:
        """Parse the data with the wire format's reader (depth and JSON rules included)."""
        text: str = self.cleaned_data["payload"]
        try:
            return wire.loads(text, what="data")
        except MalformedEntry as exc:
            raise ValidationError(str(exc)) from exc

    def clean(self) -> dict[str, Any]:
        """Keep the data's text beside its value (to fill the form again after sending)."""
        cleaned = super().clean() or {}
        if "payload" in cleaned:
            cleaned["payload_text"] = str(self.data.get("payload", "")).strip()
        return cleaned
