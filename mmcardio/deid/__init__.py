"""De-identification of a cohort before anything else reads it (`mmcardio prepare`).

What goes, by format (the readers' inputs are kept bit for bit):
- manifest: study_id and patient_id become keyed-hash pseudonyms ("s-"/"p-" + 16 hex);
  columns outside the study schema are dropped; ages above 89 become 90; known identifiers
  (names and ids from the headers and the row) and dates in report text become placeholders.
- DICOM: the PS3.15 basic profile (`mmcardio.deid.dicom`), keyed-hash UIDs, burned-in text.
- ECG XML / WFDB / EDF / CSV: patient blocks, comments, dates (`mmcardio.deid.ecg`).
- NIfTI / MetaImage / MP4-AVI: free-text header fields, extensions, metadata (`mmcardio.deid.images`).
File names are replaced too (originals often hold names or record numbers).
"""
from mmcardio.deid.cohort import deidentify_cohort, write_mapping
from mmcardio.deid.keys import KEY_ENV, DeidKey, default_key_file, load_key
from mmcardio.deid.text import PLACEHOLDER, Scrubber

__all__ = ["KEY_ENV", "PLACEHOLDER", "DeidKey", "Scrubber", "default_key_file", "deidentify_cohort", "load_key",
           "write_mapping"]
