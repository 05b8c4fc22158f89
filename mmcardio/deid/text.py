"""Free text (reports, XML statements, error messages) with a study's known identifiers removed.

Only identifiers known from the study's own headers and manifest row are found: a name that
no header or column states (a relative named in a report) cannot be told from a word.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

PLACEHOLDER = "[REDACTED]"
DATE_PLACEHOLDER = "[DATE]"
#: Name parts shorter than this are not searched for alone (an initial would blank every "A").
MIN_PART = 2
#: 03/12/2019, 2019-03-12, 12.03.19: dates in free text (HIPAA safe harbour removes them).
DATE_PATTERN = re.compile(r"\b(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})\b")
#: Manifest columns (outside the study schema) whose values are identifiers to look for.
IDENTIFIER_COLUMN = re.compile(r"mrn|name|accession|patient|record|_id$|^id$|birth|dob|address|phone|"
                               r"email|ssn|insurance", re.IGNORECASE)


def identifier_forms(value: str) -> set[str]:
    """A value and its parts as they may be written: DICOM person names ("LAST^FIRST^MIDDLE")
    split at carets, spaces and commas, and the whole name in "First Last" and "Last, First" order."""
    value = str(value).strip()
    if not value:
        return set()
    forms = {value}
    parts = [p for p in re.split(r"[\^,\s=]+", value) if p]
    forms.update(p for p in parts if len(p) >= MIN_PART)
    if "^" in value and len(parts) > 1:
        forms.update({" ".join(parts[1:] + parts[:1]), f"{parts[0]}, {' '.join(parts[1:])}",
                      " ".join(parts)})
    return forms


def _is_code(value: str) -> bool:
    return len(value) >= 4 and any(c.isdigit() for c in value)


class Scrubber:
    """Replaces known identifier values (case-insensitive, as whole words) and dates in text."""

    def __init__(self, values: Iterable[str] = ()):
        self.values: set[str] = set()
        self._pattern: re.Pattern | None = None
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            self.values |= identifier_forms(value)
        ordered = sorted(self.values, key=len, reverse=True)  # longest first: whole names before parts
        # ids with digits are found inside words too ("MRN12345"); names only as whole words
        alternatives = [re.escape(v) if _is_code(v) else rf"(?<!\w){re.escape(v)}(?!\w)" for v in ordered]
        self._pattern = re.compile("|".join(alternatives), re.IGNORECASE) if ordered else None

    def __call__(self, text: str, dates: bool = True) -> str:
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(PLACEHOLDER, text)
        return DATE_PATTERN.sub(DATE_PLACEHOLDER, text) if dates else text
