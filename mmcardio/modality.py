"""The modality namespace: models, batches, losses and indexes are dicts keyed by it."""
from __future__ import annotations

from enum import Enum


class Modality(str, Enum):
    ECG = "ecg"
    ECHO = "echo"
    CMR = "cmr"
    CT = "ct"
    TEXT = "text"

    def __str__(self) -> str:  # so f-strings and JSON keys read "ecg", not "Modality.ECG"
        return self.value


#: The image/signal modalities that a study can hold (text is the anchor they align to).
STUDY_MODALITIES = (Modality.ECG, Modality.ECHO, Modality.CMR, Modality.CT)

#: Echo views understood across the package; an unknown view is kept but gets the "OTHER" id.
ECHO_VIEWS = ("A4C", "A2C", "A3C", "PLAX", "PSAX", "SUBCOSTAL", "OTHER")
