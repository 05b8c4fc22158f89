"""De-identification by `mmcardio prepare`: identifiers planted in DICOM, ECG XML, WFDB, NIfTI,
file names and manifest fields appear in no byte that prepare and the commands after it write;
the same check finds them after `prepare --no-deidentify` (so it can fail). Unit tests check
the PS3.15 actions on real DICOM files, a CT series that still reads as one series, keyed
pseudonyms, the key file, and that every cleaned file reads back to the same samples."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import secrets
import stat
import xml.etree.ElementTree as ET
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom import examples

from mmcardio.cli import main as cli_main
from mmcardio.datasets.readers import read_ecg, read_video, read_volume
from mmcardio.datasets.readers.dicom_series import read_dicom_series
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.datasets.writers.dicom import write_dicom_series
from mmcardio.datasets.writers.ecg import write_ecg
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.deid import PLACEHOLDER, DeidKey, Scrubber, load_key
from mmcardio.deid.dicom import BurnedInError, deidentify_dicom_file
from mmcardio.deid.ecg import deidentify_ecg_xml, deidentify_wfdb, xml_identifiers
from mmcardio.deid.images import deidentify_nifti, deidentify_video
from mmcardio.errors import MMCardioError
from mmcardio.records import ECG, STANDARD_LEADS, Volume
from mmcardio.study import read_manifest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
#: A report head small enough for seconds of training (sizes as tests/test_report_head.py's).
REPORT_HEAD = ["max_steps=2", "batch_size=4", "tiny.n_layer=1", "tiny.n_embd=32", "tiny.vocab_size=400",
               "log_every=1", "max_failed_fraction=1"]
FAST = ["batch_size=4", "log_every=1", "num_workers=0", "optimizer.warmup_steps=2", "max_steps=2",
        "checkpoint_every=2"]
N_STUDIES, SEED = 5, 11


def _token(role: str) -> str:
    return f"ZQX{role}{secrets.randbelow(10**6):06d}"


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    """Unique strings that must never be written by prepare or anything after it."""
    names = ("LAST", "FIRST", "MRN", "ADDR", "INST", "ACC", "DOC", "PRIV", "NIFTI", "DIR", "FILE", "XMLSITE")
    planted = {name: _token(name) for name in names}
    planted["BIRTH"] = f"18{10 + secrets.randbelow(90)}0{1 + secrets.randbelow(9)}1{1 + secrets.randbelow(9)}"  # DA
    return planted


# --- planting identifiers -------------------------------------------------------------------------

def _plant_dicom(path: Path, t: dict[str, str]) -> None:
    ds = pydicom.dcmread(path)
    ds.PatientName = f"{t['LAST']}^{t['FIRST']}"
    ds.PatientID, ds.PatientBirthDate, ds.PatientAddress = t["MRN"], t["BIRTH"], t["ADDR"]
    ds.InstitutionName, ds.AccessionNumber = t["INST"], t["ACC"]
    ds.ReferringPhysicianName = f"{t['DOC']}^{t['FIRST']}"
    ds.private_block(0x0011, "ZQX CREATOR", create=True).add_new(0x01, "LO", t["PRIV"])
    ds.save_as(path)


def _muse_patient_block(root: ET.Element, t: dict[str, str]) -> None:
    block = ET.Element("PatientDemographics")
    for tag, value in (("PatientID", t["MRN"]), ("PatientLastName", t["LAST"]), ("PatientFirstName", t["FIRST"]),
                       ("DateofBirth", t["BIRTH"])):
        ET.SubElement(block, tag).text = value
    test = ET.Element("TestDemographics")
    ET.SubElement(test, "SiteName").text = t["XMLSITE"]
    ET.SubElement(test, "AcquisitionDate").text = "03-12-2019"
    root.insert(0, test)
    root.insert(0, block)


def _cardiosoft_patient_block(root: ET.Element, t: dict[str, str]) -> None:
    info = ET.Element("PatientInfo")
    ET.SubElement(info, "PID").text = t["MRN"]
    name = ET.SubElement(info, "Name")
    ET.SubElement(name, "FamilyName").text = t["LAST"]
    ET.SubElement(name, "GivenName").text = t["FIRST"]
    root.insert(0, info)


def _aecg_patient_block(root: ET.Element, t: dict[str, str]) -> None:
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    node = root
    for tag in ("componentOf", "timepointEvent", "componentOf", "subjectAssignment", "subject", "trialSubject"):
        node = ET.SubElement(node, ns + tag)
    ET.SubElement(node, ns + "id", extension=t["MRN"], root="1.2.3")
    person = ET.SubElement(node, ns + "subjectDemographicPerson")
    name = ET.SubElement(person, ns + "name")
    ET.SubElement(name, ns + "given").text = t["FIRST"]
    ET.SubElement(name, ns + "family").text = t["LAST"]


PATIENT_BLOCKS = {"muse": _muse_patient_block, "cardiosoft": _cardiosoft_patient_block, "aecg": _aecg_patient_block}


def write_ecg_with_patient(ecg: ECG, path: Path, fmt: str, t: dict[str, str]) -> Path:
    write_ecg(ecg, path, format=fmt)
    tree = ET.parse(path)
    PATIENT_BLOCKS[fmt](tree.getroot(), t)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def _plant_cohort(cohort: Path, t: dict[str, str]) -> None:
    """Identifiers in every DICOM header, three ECGs rewritten as vendor XML with patient blocks,
    WFDB comments, NIfTI descriptions, a file name, and the manifest's ids, columns and reports."""
    for path in cohort.rglob("*.dcm"):
        _plant_dicom(path, t)
    for header in cohort.rglob("*.hea"):
        header.write_text(header.read_text() + f"# Name: {t['LAST']} {t['FIRST']}\n# MRN: {t['MRN']}\n# Age: 45\n")
    for path in [*cohort.rglob("*.nii.gz"), *cohort.rglob("*.nii")]:
        image = nib.load(path)
        image.header["descrip"] = f"{t['NIFTI']} modality=ct".encode()
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header), path)
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    xml_formats = iter(["muse", "cardiosoft", "aecg"])
    for i, row in frame.iterrows():
        fmt = next(xml_formats, None) if row["ecg"] and not row["ecg"].endswith(".hea") else None
        if fmt:  # an ECG as vendor XML with a patient block, named after the patient
            ecg = read_ecg(cohort / row["ecg"])
            name = f"ecg/{t['LAST']}_{t['FILE']}_{i}.xml"
            write_ecg_with_patient(ecg, cohort / name, fmt, t)
            frame.loc[i, "ecg"] = name
        frame.loc[i, "study_id"] = f"{_token('STUDY')}"
        frame.loc[i, "patient_id"] = f"{_token('PAT')}"
        frame.loc[i, "report"] = f"Patient {t['FIRST']} {t['LAST']} (MRN {t['MRN']}), seen 03/12/2019. {row['report']}"
    frame["mrn"] = t["MRN"]
    frame["patient_name"] = f"{t['LAST']}, {t['FIRST']}"
    frame.to_csv(cohort / "manifest.csv", index=False)
    t.update({f"ID{i}": v for i, v in enumerate([*frame["study_id"], *frame["patient_id"]])})


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokens) -> Path:
    """A phantom cohort in a folder named with an identifier, identifiers planted everywhere."""
    cohort = tmp_path_factory.mktemp("deid") / f"cohort_{tokens['DIR']}"
    generate_cohort(cohort, N_STUDIES, seed=SEED, progress=False, workers=1)
    _plant_cohort(cohort, tokens)
    return cohort


@pytest.fixture(autouse=True)
def key_outside_outputs(tmp_path, monkeypatch):
    """Each test its own key file (never the user's ~/.config)."""
    monkeypatch.setenv("MMCARDIO_DEID_KEY_FILE", str(tmp_path / "keys" / "deid.key"))


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --- running commands with everything they print and log kept in their output folder ------------

def run_logged(argv: list[str], log_folder: Path) -> tuple[int, str]:
    """Run a command in-process; its stdout, stderr and every log record (DEBUG and up) go to
    files in `log_folder`, as an operator's job scheduler would keep them."""
    log_folder.mkdir(parents=True, exist_ok=True)
    name = argv[0]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.FileHandler(log_folder / f"{name}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(argv)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    (log_folder / f"{name}.stdout").write_text(out.getvalue(), encoding="utf-8")
    (log_folder / f"{name}.stderr").write_text(err.getvalue(), encoding="utf-8")
    return code, out.getvalue()


def encodings(token: str) -> list[bytes]:
    forms = {token, token.lower(), token.upper()}
    return [f.encode(codec) for f in forms for codec in ("utf-8", "utf-16-le", "utf-16-be")]


def readable_bytes(path: Path) -> bytes:
    """A file's bytes, with gzip and zip (.nii.gz, .npz) contents decompressed after them: a
    compressed identifier is still an identifier."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data += gzip.decompress(data)
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as archive:
            data += b"".join(archive.read(name) + name.encode() for name in archive.namelist())
    return data


def leaks(folders: list[Path], t: dict[str, str]) -> list[tuple[str, str]]:
    """(file, planted token) for every planted identifier found in any byte under `folders`
    (file names included), in UTF-8/UTF-16, any case, and the DICOM caret form of the name."""
    needles = {name: encodings(value) for name, value in t.items()}
    needles["CARET"] = encodings(f"{t['LAST']}^{t['FIRST']}")
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if any(needle in str(path).encode() for name, forms in needles.items() for needle in forms[:1]):
                found.append((str(path), "path"))
            if path.is_file():
                data = readable_bytes(path)
                found += [(str(path.relative_to(folder)), name) for name, forms in needles.items()
                          if any(form in data for form in forms)]
    return found


def test_no_planted_identifier_is_written_by_prepare_or_the_commands_after_it(planted, tokens, tmp_path):
    assert {name for _, name in leaks([planted], tokens)} >= set(tokens) - {"DIR"}  # planted everywhere
    out, run = tmp_path / "prepared", tmp_path / "run"
    mapping = tmp_path / "private" / "mapping.csv"
    code, printed = run_logged(["prepare", "--manifest", str(planted / "manifest.csv"), "--out", str(out),
                                "--config", str(TINY), "--mapping", str(mapping), "--json"], out / "logs")
    result = json.loads(printed)
    assert code == 0, result["failed"]
    assert result["deidentification"]["deidentified"] == N_STUDIES and result["prepared"] == N_STUDIES
    manifest = out / "manifest.csv"
    studies = read_manifest(manifest)
    assert all(s.study_id.startswith("s-") and s.patient_id.startswith("p-") for s in studies)
    assert all(PLACEHOLDER in s.report and "[DATE]" in s.report for s in studies)
    assert set(pd.read_csv(manifest).columns).isdisjoint({"mrn", "patient_name"})
    copied = {p.name.split(".", 1)[-1] for p in (out / "files").rglob("*.*")}
    assert {"hea", "xml", "dcm", "nii.gz"} <= copied  # WFDB, vendor XML, DICOM and NIfTI were all cleaned
    again = json.loads(run_logged(["prepare", "--manifest", str(planted / "manifest.csv"), "--out", str(out),
                                   "--config", str(TINY), "--json"], out / "logs-again")[1])
    assert again["deidentification"]["reused"] == N_STUDIES and again["reused"] == N_STUDIES  # same key
    # the mapping goes where the user said, readable by the user only
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    assert tokens["ID0"] in mapping.read_text() and "s-" in mapping.read_text()

    sets = [x for item in FAST for x in ("--set", item)]
    steps = [
        ["pretrain", "--config", str(TINY), "--manifest", str(manifest), "--cache", str(out), "--out",
         str(run / "model"), "--json", *sets],
        ["embed", "--model", str(run / "model" / "final"), "--manifest", str(manifest), "--cache", str(out),
         "--out", str(run / "store"), "--json"],
        ["index", "--store", str(run / "store"), "--out", str(run / "index"), "--json"],
        ["retrieve", "mitral regurgitation", "--index", str(run / "index"), "--k", "3", "--json"],
        ["zeroshot", "--model", str(run / "model" / "final"), "--manifest", str(manifest), "--split", "all",
         "--out", str(run / "zeroshot"), "--store", str(run / "store"), "--bootstrap", "20", "--json"],
        ["report", "train", "--manifest", str(manifest), "--out", str(run / "report"), "--json",
         *(x for item in REPORT_HEAD for x in ("--set", item)),
         "--set", f"clip_model={run / 'model' / 'final'}", "--set", f"store={run / 'store'}"],
    ]
    for argv in steps:
        code, _ = run_logged(argv, run / "logs")
        assert code == 0, (run / "logs" / f"{argv[0]}.stderr").read_text()[-2000:]
    assert (run / "zeroshot" / "metrics.json").is_file()
    draft = ["report", "--model", str(run / "report" / "final"), "--manifest", str(manifest),
             "--study", studies[0].study_id, "--json"]
    code, printed = run_logged(draft, run / "logs" / "draft")
    assert code in (0, 3) and json.loads(printed)["study_id"] == studies[0].study_id  # drafted or declined

    assert leaks([out, run], tokens) == []
    assert not any(p.name == "deid.key" for p in out.rglob("*"))  # the key never goes into OUT


def test_the_leak_check_finds_identifiers_when_prepare_does_not_deidentify(planted, tokens, tmp_path):
    out = tmp_path / "raw"
    code, _ = run_logged(["prepare", "--manifest", str(planted / "manifest.csv"), "--out", str(out),
                          "--config", str(TINY), "--no-deidentify", "--json"], out / "logs")
    assert code == 0
    found = {name for _, name in leaks([out], tokens)}
    assert {"ID0", "ID1"} <= found  # study ids key the cache index and name its files
    assert not (out / "files").exists() and not (out / "manifest.csv").exists()


def test_a_refused_study_is_listed_by_pseudonym_without_its_path(planted, tokens, tmp_path):
    """An echo that may show a burned-in name and has no regions to blank is refused; the
    failure names the pseudonym and the column, not the file (whose path holds identifiers)."""
    folder = tmp_path / f"{tokens['LAST']}_{tokens['MRN']}"
    folder.mkdir()
    src = _planted_copy("ybr_color", folder, tokens)
    ds = pydicom.dcmread(src)
    del ds.SequenceOfUltrasoundRegions
    ds.save_as(src)
    frame = pd.read_csv(planted / "manifest.csv", dtype=str, keep_default_na=False).iloc[:2].copy()
    frame["echo"] = [json.dumps([{"path": str(src), "view": "A4C"}]), frame["echo"].iloc[1]]
    frame["masks"] = "{}"
    manifest = planted / f"two-{tmp_path.name}.csv"  # beside the cohort: its relative paths hold
    frame.to_csv(manifest, index=False)
    out = tmp_path / "prepared"
    code, printed = run_logged(["prepare", "--manifest", str(manifest), "--out", str(out),
                                "--config", str(TINY), "--json"], out / "logs")
    result = json.loads(printed)
    key, _ = load_key()  # the key file the autouse fixture names
    refused = key.study(frame["study_id"].iloc[0])
    assert code == 1 and list(result["failed"]) == [refused]
    assert "echo" in result["failed"][refused] and "BurnedInAnnotation" in result["failed"][refused]
    assert len(read_manifest(out / "manifest.csv")) == 1 and result["prepared"] == 1
    assert leaks([out], tokens) == []


def test_mapping_and_key_inside_out_are_refused(planted, tmp_path):
    out = tmp_path / "prepared"
    for option in (["--mapping", str(out / "map.csv")], ["--deid-key", str(out / "k.key")]):
        code, printed = run_logged(["prepare", "--manifest", str(planted / "manifest.csv"), "--out", str(out),
                                    *option, "--json"], tmp_path / "logs")
        assert code == 2 and "outside the output folder" in json.loads(printed)["error"]
    assert not (out / "map.csv").exists() and not (out / "k.key").exists()


# --- unit tests: keys and text ----------------------------------------------------------------------

def test_pseudonyms_are_stable_with_a_key_and_differ_with_another(tmp_path):
    key, path = load_key(tmp_path / "cfg" / "deid.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    again, _ = load_key(path)
    other = DeidKey(os.urandom(32))
    assert key.study("MRN-1") == again.study("MRN-1") != other.study("MRN-1")
    assert key.study("1") != key.patient("1")  # domains separated
    assert key.study("A").startswith("s-") and len(key.study("A")) == 18
    uid = key.uid("1.2.840.1")
    assert uid == again.uid("1.2.840.1") and uid.startswith("2.25.") and len(uid) <= 64
    with pytest.raises(MMCardioError, match="does not exist"):
        load_key(tmp_path / "missing.key", create=False)


def test_scrubber_replaces_known_names_ids_and_dates_only():
    scrub = Scrubber(["DOE^JOHN^Q", "12345678"])
    text = scrub("John Doe (MRN12345678) seen 2019-03-12 by Dr A. LVEF 55 %, Doe's LV normal; johnny ok")
    assert "Doe" not in text and "John " not in text and "12345678" not in text and "2019" not in text
    assert "LVEF 55 %" in text and "johnny" in text and text.count(PLACEHOLDER) == 4


# --- unit tests: DICOM ------------------------------------------------------------------------------

def _planted_copy(example: str, folder: Path, t: dict[str, str]) -> Path:
    path = folder / f"{example}.dcm"
    path.write_bytes(Path(examples.get_path(example)).read_bytes())
    _plant_dicom(path, t)
    return path


def test_ps315_actions_on_a_real_ecg_and_echo(tmp_path, tokens):
    key = DeidKey(b"k" * 32)
    for example, reader in (("waveform", read_ecg), ("ybr_color", read_video)):
        src = _planted_copy(example, tmp_path, tokens)
        dst = tmp_path / "out" / f"{example}.dcm"
        deidentify_dicom_file(src, dst, key, "p-0000000000000001")
        before, after = pydicom.dcmread(src), pydicom.dcmread(dst)
        assert after.PatientName == "" and after.PatientID == "p-0000000000000001"
        assert after.PatientBirthDate != tokens["BIRTH"] and "PatientAddress" not in after
        assert tokens["INST"] not in str(after.get("InstitutionName", ""))
        assert tokens["ACC"] not in str(after.get("AccessionNumber", ""))
        assert tokens["DOC"] not in str(after.get("ReferringPhysicianName", ""))
        assert not any(e.tag.is_private for e in after.iterall())
        assert after.PatientIdentityRemoved == "YES" and "Basic Profile" in after.DeidentificationMethod
        assert after.SOPClassUID == before.SOPClassUID
        assert after.SOPInstanceUID == key.uid(before.SOPInstanceUID) == after.file_meta.MediaStorageSOPInstanceUID
        assert after.StudyInstanceUID == key.uid(before.StudyInstanceUID)
        data = dst.read_bytes()
        assert not any(form in data for value in tokens.values() for form in encodings(value))
        a, b = reader(src), reader(dst)
        if example == "waveform":
            np.testing.assert_array_equal(a.signal, b.signal)
            assert a.fs == b.fs and a.lead_names == b.lead_names
        else:  # pixels outside the ultrasound region (where scanners print names) are blanked
            region = before.SequenceOfUltrasoundRegions[0]
            y0, x0 = region.RegionLocationMinY0, region.RegionLocationMinX0
            np.testing.assert_array_equal(a.frames[:, y0:, x0:], b.frames[:, y0:, x0:])
            assert b.frames[:, :y0].max() == 0 and b.frames[:, :, :x0].max() == 0 and a.frames[:, :y0].max() > 0
            assert a.fps == b.fps and a.pixel_spacing_mm == b.pixel_spacing_mm


def test_ultrasound_without_regions_is_refused_unless_kept(tmp_path, tokens):
    src = _planted_copy("ybr_color", tmp_path, tokens)
    ds = pydicom.dcmread(src)
    del ds.SequenceOfUltrasoundRegions
    ds.save_as(src)
    with pytest.raises(BurnedInError, match="burned-in|BurnedInAnnotation"):
        deidentify_dicom_file(src, tmp_path / "out.dcm", DeidKey(b"k" * 32), "p-1")
    assert not (tmp_path / "out.dcm").exists()
    deidentify_dicom_file(src, tmp_path / "out.dcm", DeidKey(b"k" * 32), "p-1", keep_burned_in=True)
    np.testing.assert_array_equal(read_video(src).frames, read_video(tmp_path / "out.dcm").frames)


def test_ct_series_reads_as_the_same_series_after_deidentification(tmp_path, tokens):
    rng = np.random.default_rng(0)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-50.0, 20.0, 100.0]
    volume = Volume(array=rng.integers(-1000, 1500, (6, 12, 10)).astype(np.float32), spacing_mm=(2.5, 0.7, 0.7),
                    affine=affine, units="HU", modality="ct")
    series = write_dicom_series(volume, tmp_path / "series")
    for path in series.iterdir():
        _plant_dicom(path, tokens)
    key = DeidKey(b"k" * 32)
    out = tmp_path / "deid"
    for i, path in enumerate(sorted(series.iterdir())):
        deidentify_dicom_file(path, out / f"{i:03d}.dcm", key, "p-1")
    a, b = read_dicom_series(series), read_dicom_series(out)
    assert a.array.shape == b.array.shape and a.spacing_mm == b.spacing_mm
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(out.iterdir())]
    assert len({h.SeriesInstanceUID for h in headers}) == 1 and len({h.SOPInstanceUID for h in headers}) == 6
    assert len({h.FrameOfReferenceUID for h in headers}) == 1


# --- unit tests: ECG XML, WFDB, NIfTI, video -----------------------------------------------------------

def _ecg() -> ECG:
    rng = np.random.default_rng(1)
    signal = np.round(rng.normal(0, 0.3, (12, 1000)), 3).astype(np.float32)
    return ECG(signal=signal, fs=500.0, lead_names=list(STANDARD_LEADS))


@pytest.mark.parametrize("fmt", ["muse", "cardiosoft", "aecg"])
def test_ecg_xml_patient_blocks_are_emptied_and_samples_kept(fmt, tmp_path, tokens):
    src = write_ecg_with_patient(_ecg(), tmp_path / f"{fmt}.xml", fmt, tokens)
    found = xml_identifiers(src)
    assert {tokens["MRN"], tokens["LAST"], tokens["FIRST"]} <= found
    deidentify_ecg_xml(src, tmp_path / "out.xml", Scrubber(found))
    text = (tmp_path / "out.xml").read_text()
    assert not any(tokens[k] in text for k in ("MRN", "LAST", "FIRST", "BIRTH", "XMLSITE")) and "2019" not in text
    a, b = read_ecg(src), read_ecg(tmp_path / "out.xml")
    np.testing.assert_array_equal(a.signal, b.signal)
    assert a.fs == b.fs and a.lead_names == b.lead_names


def test_wfdb_comments_dropped_and_record_renamed(tmp_path, tokens):
    header = write_ecg(_ecg(), tmp_path / f"{tokens['LAST']}.hea")
    lines = header.read_text().splitlines()
    lines[0] += " 10:11:12 03/12/2019"  # base time and date
    header.write_text("\n".join(lines) + f"\n# Name: {tokens['LAST']}\n# Age: 45\n")
    out = tmp_path / "out"
    out.mkdir()
    new = deidentify_wfdb(header, out, "s-00112233aabbccdd")
    assert sorted(p.name for p in out.iterdir()) == ["s-00112233aabbccdd.dat", "s-00112233aabbccdd.hea"]
    text = new.read_text()
    assert "#" not in text and "2019" not in text and tokens["LAST"] not in text
    np.testing.assert_array_equal(read_ecg(header).signal, read_ecg(new).signal)


def test_nifti_text_fields_and_extensions_cleared_voxels_kept(tmp_path, tokens):
    volume = Volume(array=np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 50, spacing_mm=(2.0, 1.0, 1.5),
                    affine=np.diag([1.5, 1.0, 2.0, 1.0]), units="HU", modality="ct")
    src = write_nifti(volume, tmp_path / "ct.nii.gz")
    image = nib.load(src)
    header = image.header
    header["descrip"], header["aux_file"], header["db_name"] = f"{tokens['NIFTI']} modality=ct".encode(), \
        tokens["LAST"].encode(), tokens["MRN"].encode()
    header["intent_name"] = tokens["FIRST"][:15].encode()
    header.extensions.append(nib.nifti1.Nifti1Extension("comment", f"patient {tokens['LAST']}".encode()))
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header), src)
    deidentify_nifti(src, tmp_path / "out.nii.gz")
    raw = nib.load(tmp_path / "out.nii.gz")
    assert tokens["LAST"].encode() in readable_bytes(src)  # planted
    data = readable_bytes(tmp_path / "out.nii.gz")
    assert not any(tokens[k].encode() in data for k in ("NIFTI", "LAST", "MRN"))
    assert tokens["FIRST"][:15].encode() not in data and len(raw.header.extensions) == 0
    a, b = read_volume(src), read_volume(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)
    assert a.units == b.units == "HU" and b.modality == "ct"


def test_video_remuxed_without_metadata_frames_identical(tmp_path, tokens):
    src = tmp_path / "clip.mp4"
    frames = np.random.default_rng(2).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    with av.open(str(src), "w") as container:
        container.metadata["title"] = tokens["LAST"]
        container.metadata["comment"] = tokens["MRN"]
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    assert tokens["LAST"].encode() in src.read_bytes()
    deidentify_video(src, tmp_path / "out.mp4")
    data = (tmp_path / "out.mp4").read_bytes()
    assert tokens["LAST"].encode() not in data and tokens["MRN"].encode() not in data
    a, b = read_video(src), read_video(tmp_path / "out.mp4")
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.fps == b.fps
