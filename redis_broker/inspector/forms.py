"""Forms of the admin inspector: page filters (GET) and action parameters (GET to confirm,
POST to act). Every id a form accepts is checked against the entry-id syntax, so nothing
but a well-formed id ever reaches a Redis command."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from .. import wire

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


class EntryIdsField(forms.Field):
    """A list of entry ids, posted as repeated hidden inputs (or checkboxes) named ``ids``."""

    widget = forms.MultipleHiddenInput

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
            raise ValidationError("Select at least one entry.")
        if len(value) > MAX_IDS:
            raise ValidationError(f"Select at most {MAX_IDS} entries at once.")
        for item in value:
            validate_entry_id(item)


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


class ConfirmForm(forms.Form):
    """An action without parameters: the form only carries the CSRF token."""


class EntryIdsForm(forms.Form):
    """An action on selected entries (ack, delete, requeue)."""

    ids = EntryIdsField()


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
