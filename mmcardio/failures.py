"""Studies that fail to read: skipped and listed, under a limit, never replaced.

Hospital cohorts hold truncated and corrupt files. Training (pretraining, segmenters, the
report head) and embedding read every study; one that cannot be read is logged with the
reader's message, left out (never replaced by zeros or by another study) and listed in the
run's summary. A run stops with an `MMCardioError` when more than `max_failed_fraction` of its
studies fail (default 1%: beyond that, a wrong path or format is more likely than a few bad
files, and a model trained on what is left would not be the cohort's).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mmcardio.config import check_fields
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.io import write_json

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILED_FRACTION = 0.01
#: The run-config key; its file in a run folder lists the studies a run skipped.
FAILED_FRACTION_KEY, SKIPPED_FILE = "max_failed_fraction", "skipped_studies.json"
_SHOWN = 5  # failures quoted in the error; the log has them all


def failure_reason(err: BaseException) -> str:
    """What a failed read says: a reader's message (it names the file), else the exception."""
    return str(err) if isinstance(err, MMCardioError) else f"{type(err).__name__}: {err}"


@dataclass(frozen=True)
class FailurePolicy:
    """How many unreadable studies a run tolerates: at most `max_failed_fraction` of those it
    reads (0 stops at the first failure, 1 never stops). `setting` tells the user how to
    change it (a `--set` item or a command-line flag) with a `{value}` placeholder."""

    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION
    setting: str = f"--set {FAILED_FRACTION_KEY}={{value}}"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ConfigError(f"expected a share of the studies in [0, 1], got {self.max_failed_fraction!r}",
                              field=FAILED_FRACTION_KEY)

    def allowed(self, total: int) -> int:
        """The most studies of `total` that may fail."""
        return math.floor(self.max_failed_fraction * total + 1e-9)  # 0.29 * 100 is 28.999...

    def check(self, failed: Mapping[str, str], total: int, source: str | Path | None = None,
              read_all: bool = True) -> None:
        """Refuse `failed` ({study_id: reason}) when more of the `total` studies failed than
        allowed (`read_all` False: reading stopped there, more may fail)."""
        if len(failed) <= self.allowed(total):
            return
        share = len(failed) / max(total, 1)
        needed = math.ceil(1000 * share) / 1000  # the smallest limit (to 0.001) that lets them through
        shown = "; ".join(f"{study_id}: {reason}" for study_id, reason in list(failed.items())[:_SHOWN])
        more = f" (and {len(failed) - _SHOWN} more, in the log)" if len(failed) > _SHOWN else ""
        counted = f"{'' if read_all else 'at least '}{len(failed)} of {total} studies failed to read ({share:.1%})"
        raise MMCardioError(
            f"{counted}, more than {FAILED_FRACTION_KEY} {self.max_failed_fraction:g} allows "
            f"({self.allowed(total)} of {total}); fix or remove them, or skip them with "
            f"{self.setting.format(value=f'{needed:g}')}. First failures: {shown}{more}",
            source, FAILED_FRACTION_KEY)


@dataclass
class FailureLimit:
    """The run-config part every training run shares (a base of its config dataclass).

    max_failed_fraction: the share of the run's studies that may fail to read; they are
        skipped, logged and listed under "skipped_studies" in run.json. More stops the run
        (0: stop at the first; 1: never stop).
    """

    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION

    def __post_init__(self) -> None:
        check_fields(self, [(FAILED_FRACTION_KEY, 0.0 <= self.max_failed_fraction <= 1.0,
                             "expected a share of the studies in [0, 1]")])

    @property
    def failure_policy(self) -> FailurePolicy:
        return FailurePolicy(self.max_failed_fraction)


def log_failures(failed: Mapping[str, str], what: str) -> None:
    """One warning per skipped study, with its reason."""
    for study_id, reason in failed.items():
        log.warning("%s: study %s skipped, it cannot be read: %s", what, study_id, reason)


def skipped_note(skipped: Mapping[str, str], where: str = "run.json") -> str:
    """A line for a command's text output naming the skipped studies ("" when none)."""
    if not skipped:
        return ""
    return f"\n{len(skipped)} unreadable studies skipped (reasons in {where}): {', '.join(skipped)}"


def remember_skipped(out: Path, skipped: Mapping[str, str], resumed: bool) -> dict[str, str]:
    """The studies the run skipped in this session and, when `resumed`, in its earlier ones
    (kept in OUT/skipped_studies.json: a study skipped before a kill was not trained on then,
    even if its file has been fixed since); returns {study_id: reason}, sorted."""
    earlier = read_skipped(out) if resumed else {}
    union = dict(sorted({**earlier, **skipped}.items()))
    write_json(Path(out) / SKIPPED_FILE, union)
    return union


def read_skipped(out: Path) -> dict[str, str]:
    """The studies a run has skipped so far ({} when none)."""
    path = Path(out) / SKIPPED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
