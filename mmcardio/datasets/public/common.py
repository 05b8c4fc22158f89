"""What every public-dataset recipe shares: patient-disjoint splits, the dataset's tables read
with errors naming file and column, and label maps renumbered into the package's `Label`s."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mmcardio.datasets.synthetic.findings import REDUCED_EF_PCT, mildly_reduced_ef
from mmcardio.errors import ManifestError
from mmcardio.study import SPLITS

#: Shares of patients in train / val / test when a dataset has no official split.
DEFAULT_SHARES = (0.8, 0.1, 0.1)


def patient_split(patient_id: str, shares: tuple[float, float, float] = DEFAULT_SHARES,
                  salt: str = "mmcardio") -> str:
    """"train", "val" or "test" for a patient, from a hash of its id: the same on every machine
    and run, and patient-disjoint (every study of a patient lands in one split)."""
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    bounds = np.cumsum(shares) / sum(shares)
    return SPLITS[int(np.searchsorted(bounds, draw, side="right"))]


def read_table(path: Path, required: Iterable[str], **read_csv) -> pd.DataFrame:
    """A dataset's CSV with the columns a recipe needs; an error names the file and the column."""
    if not path.is_file():
        raise ManifestError("expected this file of the dataset's layout; is ROOT the dataset's "
                            "top folder?", path)
    try:
        frame = pd.read_csv(path, **read_csv)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ManifestError(f"cannot parse the table: {err}", path) from None
    for column in required:
        if column not in frame.columns:
            raise ManifestError(f"missing column; the table has {list(frame.columns)}", path, column)
    return frame


def renumber_labels(labels: np.ndarray, mapping: Mapping[int, int], path: Path) -> np.ndarray:
    """A dataset's label map with its values replaced by the package's (`records.Label`); a
    value the mapping does not know is an error naming the file (never silently background)."""
    labels = np.asarray(labels)
    values = np.unique(labels)
    unknown = sorted(int(v) for v in values if int(v) not in mapping)
    if unknown or not np.allclose(values, np.round(values)):
        raise ManifestError(f"label values {unknown or values.tolist()} are not the dataset's "
                            f"{sorted(mapping)}", path)
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[labels.astype(np.intp)]


def reduced_ef_labels(lvef_pct: float) -> dict[str, int]:
    """reduced_ef as findings.py defines it: 1 below 40 %, 0 at a normal EF (>= 52 %), absent in
    the mildly reduced 40-51 % (reports do not call it reduced, nor normal)."""
    if math.isnan(lvef_pct) or mildly_reduced_ef(lvef_pct):
        return {}
    return {"reduced_ef": int(lvef_pct < REDUCED_EF_PCT)}
