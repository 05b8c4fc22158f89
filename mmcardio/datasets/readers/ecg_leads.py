"""What each recorded channel of an ECG file is: a standard lead as measured, a modified
(ambulatory) lead that approximates one, an ECG channel no standard lead matches, or no ECG.

Labels are matched after upper-casing and removing spaces, "_" and the prefixes "MDC_ECG_",
"LEAD" and "ECG"/"EKG" (EDF+ writes "ECG II"). Holter and telemetry leads are bipolar leads on
the torso that stand in for a standard lead: MLII (modified limb lead II, MIT-BIH), ML1/MLIII,
MV1-MV6 and MCL1-MCL6 (modified chest leads), CM5/CC5 (V5 position). A plain "V1" is taken as
measured: a WFDB header cannot say that its V1 was modified, so say so in your dataset notes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mmcardio.errors import MMCardioError
from mmcardio.records import STANDARD_LEADS

#: How a lead of an `ECG` came to be (`ECG.lead_origin`).
MEASURED, MODIFIED, DERIVED, DECLARED, UNMAPPED = "measured", "modified", "derived", "declared", "unmapped"

#: Every accepted spelling of a standard lead (after `_key`). "C1".."C6" is the European
#: naming of V1..V6; "DI".."DIII" the Latin-American/French naming of I..III.
LEAD_SPELLINGS = {
    spelling: lead
    for lead, spellings in {
        "I": ("I", "DI", "D1"), "II": ("II", "DII", "D2"), "III": ("III", "DIII", "D3"),
        "aVR": ("AVR",), "aVL": ("AVL",), "aVF": ("AVF",),
        **{f"V{i}": (f"V{i}", f"C{i}") for i in range(1, 7)},
    }.items()
    for spelling in spellings
}
_ROMAN = {"I": "I", "1": "I", "II": "II", "2": "II", "III": "III", "3": "III"}
_MODIFIED_LIMB = re.compile(r"^ML(III|II|I|[123])$")
_MODIFIED_CHEST = re.compile(r"^(MV|MCL|CM|CC)([1-6])$")
#: ECG channels that approximate no standard lead, and what they are.
_UNMAPPED_KINDS = (
    (re.compile(r"^V[1-9]R$"), "a right-sided chest lead"),
    (re.compile(r"^V[7-9]$"), "a posterior chest lead"),
    (re.compile(r"^V?[XYZ]$"), "a Frank (vectorcardiographic) lead"),
    (re.compile(r"^V[1-6]-V[1-6]$"), "a bipolar lead between two chest electrodes"),
)
_EPONYMS = re.compile(r"\((einthoven|goldberger|wilson)\)", re.IGNORECASE)
_PREFIXES = re.compile(r"^(MDCECG)?(LEAD)?")
_SIGNAL_TYPE = re.compile(r"^(ECG|EKG)(?=.)")


@dataclass(frozen=True)
class ChannelRole:
    """What one channel label is: `lead` (a standard lead or None), `inverted` (stored as
    -aVR), `origin` (measured / modified / unmapped) and a note for the record."""

    label: str
    lead: str | None
    origin: str
    inverted: bool = False
    note: str = ""


def _key(label: str) -> str:
    key = re.sub(r"[\s_]", "", _EPONYMS.sub("", label)).upper()
    return _SIGNAL_TYPE.sub("", _PREFIXES.sub("", key))


def normalize_lead_name(label: str) -> tuple[str, bool] | None:
    """Standard name of a lead label and whether it is stored inverted ("-aVR"), or None when
    the label is not one of the twelve standard leads.

    >>> normalize_lead_name("MDC_ECG_LEAD_AVR"), normalize_lead_name("C1"), normalize_lead_name("-aVR")
    (('aVR', False), ('V1', False), ('aVR', True))
    """
    key = _key(label)
    inverted = key.startswith("-") or key.endswith("NEG")
    key = key.removeprefix("-").removesuffix("NEG")
    lead = LEAD_SPELLINGS.get(key)
    return None if lead is None else (lead, inverted)


def parse_lead_map(pairs: Iterable[str], field: str = "lead_map") -> dict[str, str]:
    """{"ECG1": "II"} from ["ECG1=II"]: channels whose label names no lead, and the standard lead
    each is (`read --lead`, `embed --lead`, the mitbih recipe's `lead_map` option)."""
    lead_map = {}
    for pair in pairs:
        channel, sep, lead = (part.strip() for part in pair.partition("="))
        if not (sep and channel and lead in STANDARD_LEADS):
            raise MMCardioError(f"expected CHANNEL=LEAD with a lead among {', '.join(STANDARD_LEADS)} (e.g. "
                                f"ECG1=II), got {pair!r}", field=field)
        lead_map[channel] = lead
    return lead_map


def channel_role(label: str, declared: dict[str, str] | None = None) -> ChannelRole | None:
    """The role of a channel labelled `label`, or None when it is no ECG channel (respiration,
    EEG, a marker). `declared` maps labels (case-insensitive) to the standard lead the user says
    they are, for channels whose label does not say ("ECG1")."""
    for given, lead in (declared or {}).items():
        if given.strip().upper() == label.strip().upper():
            return ChannelRole(label, lead, DECLARED, note=f"{label}: read as lead {lead}, as declared")
    standard = normalize_lead_name(label)
    if standard is not None:
        return ChannelRole(label, standard[0], MEASURED, inverted=standard[1])
    key = _key(label)
    limb, chest = _MODIFIED_LIMB.match(key), _MODIFIED_CHEST.match(key)
    if limb or chest:
        lead = _ROMAN[limb.group(1)] if limb else f"V{chest.group(2)}"
        return ChannelRole(label, lead, MODIFIED,
                           note=f"{label}: a modified (torso-electrode) lead, read as lead {lead}")
    for pattern, kind in _UNMAPPED_KINDS:
        if pattern.match(key):
            return ChannelRole(label, None, UNMAPPED, note=f"{label}: {kind}; kept, matches no standard lead")
    if re.search(r"ECG|EKG", label, re.IGNORECASE):
        return ChannelRole(label, None, UNMAPPED,
                           note=f"{label}: an ECG channel whose label does not say which lead it is; kept "
                                f"unmapped (declare it, e.g. lead_map={{'{label}': 'II'}} or --lead {label}=II)")
    return None
