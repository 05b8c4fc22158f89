"""DICOM de-identification: the PS3.15 Basic Application Level Confidentiality Profile as
dicom-anonymizer implements it (names, IDs, dates, addresses, institution, accession numbers,
descriptions, private tags), applied inside sequences too, with three changes:

- UIDs are replaced by keyed hashes (`DeidKey.uid`), not random ones: the slices of a series
  keep one SeriesInstanceUID and FrameOfReferenceUID, and re-running gives the same files.
- PatientID is the patient's pseudonym, so the copies of one patient still link.
- Burned-in text: an ultrasound image whose BurnedInAnnotation is YES or absent has its pixels
  outside the Sequence of Ultrasound Regions blanked (names are printed in the margins), or is
  refused when it has no regions; other images stating BurnedInAnnotation YES are refused.
The attributes the readers need (pixels, geometry, timing, regions, waveforms) are not in the
profile, so they are kept as they are.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from dicomanonymizer.simpledicomanonymizer import (
    anonymize_dataset,
    delete_or_empty_or_replace_UID,
    initialize_actions,
    replace_UID,
)
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from mmcardio.datasets.readers.dicom import read_dicom_file
from mmcardio.deid.keys import DeidKey
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path

#: The newest PS3.15 table dicom-anonymizer ships (Table E.1-1 of DICOM 2026c).
PROFILE_TABLE = "dicomfields_2026c"
METHOD = "PS3.15 Basic Profile; keyed-hash UIDs; private tags removed"  # LO: 64 characters at most
#: Header values searched for in the study's report text (patients' and staff's names, ids).
IDENTIFYING_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
                        "PatientMotherBirthName", "AccessionNumber", "ReferringPhysicianName",
                        "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
                        "RequestingPhysician", "MedicalRecordLocator", "IssuerOfPatientID")
ULTRASOUND_MODALITY = "US"


class BurnedInError(MMCardioError):
    """Pixels may carry burned-in identifiers that cannot be blanked automatically."""


def dicom_identifiers(ds: Dataset) -> set[str]:
    """The names and ids a header states (to find them in the study's free text)."""
    found: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        value = ds.get(keyword)
        values = list(value) if isinstance(value, MultiValue) else [value]
        found.update(str(v) for v in values if v not in (None, ""))
    return found


def _profile(key: DeidKey) -> dict[tuple, Callable]:
    """The profile's actions with the U (UID) rules replaced by keyed-hash UIDs."""
    def hashed_uid(dataset: Dataset, tag: tuple) -> None:
        element = dataset.get(tag)
        if element is None or element.VR != "UI":
            return
        if isinstance(element.value, (list, tuple)) or element.VM > 1:
            element.value = [key.uid(str(v)) for v in element.value]
        elif element.value:
            element.value = key.uid(str(element.value))

    def hashed_uid_or_empty(dataset: Dataset, tag: tuple) -> None:
        element = dataset.get(tag)
        if element is not None and element.VR == "UI":
            hashed_uid(dataset, tag)
        elif element is not None:
            delete_or_empty_or_replace_UID(dataset, tag)

    actions = initialize_actions(PROFILE_TABLE)
    for tag, action in actions.items():
        if action is replace_UID:
            actions[tag] = hashed_uid
        elif action is delete_or_empty_or_replace_UID:
            actions[tag] = hashed_uid_or_empty
    return actions


def _apply_nested(ds: Dataset, actions: dict[tuple, Callable]) -> None:
    """The profile's rules inside sequence items (dicom-anonymizer applies them at the top level)."""
    for element in list(ds):
        if element.VR != "SQ" or not element.value:
            continue
        for item in element.value:
            for tag in list(item.keys()):
                action = actions.get((tag.group, tag.element))
                if action is not None:
                    action(item, (tag.group, tag.element))
            _apply_nested(item, actions)


def deidentify_dataset(ds: Dataset, key: DeidKey, patient_pseudonym: str, keep_burned_in: bool = False,
                       label: str = "") -> None:
    """De-identify `ds` in place (see the module docstring); raises BurnedInError for pixels
    that may carry names and cannot be blanked, unless `keep_burned_in`."""
    if not keep_burned_in:
        _handle_burned_in(ds, label)
    actions = _profile(key)
    anonymize_dataset(ds, actions, delete_private_tags=True, base_rules_gen=lambda: dict(actions))
    _apply_nested(ds, actions)
    ds.PatientID = patient_pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    method = Dataset()
    method.CodeValue, method.CodingSchemeDesignator = "113100", "DCM"
    method.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([method])
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                        "ReceivingApplicationEntityTitle", "SourcePresentationAddress"):
            if keyword in meta:
                delattr(meta, keyword)
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _handle_burned_in(ds: Dataset, label: str) -> None:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return
    stated = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if str(ds.get("Modality", "")).upper() == ULTRASOUND_MODALITY and stated != "NO":
        if not ds.get("SequenceOfUltrasoundRegions"):
            raise BurnedInError(f"ultrasound image with BurnedInAnnotation {stated or 'absent'} and no "
                                "SequenceOfUltrasoundRegions to blank outside of: its pixels may show the "
                                "patient's name (pass --keep-burned-in to copy them as they are)",
                                label, "BurnedInAnnotation")
        blank_outside_regions(ds)
    elif stated == "YES":
        raise BurnedInError("BurnedInAnnotation is YES: the pixels show identifying text that cannot be "
                            "located (pass --keep-burned-in to copy them as they are)", label, "BurnedInAnnotation")


def blank_outside_regions(ds: Dataset) -> int:
    """Set to black every pixel outside the bounding boxes of the ultrasound regions (where
    scanners print the patient's name, date and institution); returns how many pixels per
    frame were blanked. The pixel data are rewritten uncompressed only when some are."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    keep = np.zeros((rows, columns), dtype=bool)
    for region in ds.SequenceOfUltrasoundRegions:
        x0, y0 = int(region.get("RegionLocationMinX0", 0)), int(region.get("RegionLocationMinY0", 0))
        x1, y1 = int(region.get("RegionLocationMaxX1", columns - 1)), int(region.get("RegionLocationMaxY1", rows - 1))
        keep[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
    blanked = int((~keep).sum())
    if not blanked:
        return 0
    array = ds.pixel_array.copy()  # pydicom decodes YBR to RGB
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples > 1:
        array[..., ~keep, :] = 0
    else:
        array[..., ~keep] = 0
    photometric = "RGB" if samples > 1 else str(ds.PhotometricInterpretation)
    # the original SOPInstanceUID is kept here: de-identification replaces it by its keyed hash, so
    # re-running gives the same UID (pydicom would draw a random one)
    ds.set_pixel_data(array, photometric_interpretation=photometric, bits_stored=int(ds.BitsStored),
                      generate_instance_uid=False)
    return blanked


def deidentify_dicom_file(src: Path, dst: Path, key: DeidKey, patient_pseudonym: str,
                          keep_burned_in: bool = False, label: str = "") -> None:
    """Read `src` (with the reader's checks), de-identify it, write it atomically to `dst`."""
    ds = read_dicom_file(src)
    deidentify_dataset(ds, key, patient_pseudonym, keep_burned_in, label)
    with atomic_path(dst) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
