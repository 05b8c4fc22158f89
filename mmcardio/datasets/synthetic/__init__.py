"""The phantom cohort: patients with correlated findings, ECG and image phantoms, bilingual
reports, written in hospital formats with a manifest and the truth (`generate_cohort`)."""

from __future__ import annotations

from typing import Any

__all__ = ["generate_cohort"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the ECG phantom or the findings model should not load every writer.
    if name == "generate_cohort":
        from mmcardio.datasets.synthetic.cohort import generate_cohort

        return generate_cohort
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
