"""The phantom cohort: patients with correlated findings, ECG and image phantoms, bilingual
reports, written in hospital formats with a manifest and the truth (`generate_cohort`)."""

from __future__ import annotations

from mmcardio.lazy import lazy_getattr

__all__ = ["generate_cohort"]
# Lazy: importing the ECG phantom or the findings model should not load every writer.
__getattr__ = lazy_getattr(__name__, {"generate_cohort": "mmcardio.datasets.synthetic.cohort"})
