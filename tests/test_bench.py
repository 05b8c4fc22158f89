"""`mmcardio bench`: the JSON document's sections and keys, --only, --out, errors, and what the
readers read. No timing thresholds: speed is measured by the benchmark, never asserted here."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pydicom.examples
import pytest

from mmcardio.bench import SECTIONS, recall, unit_vectors
from mmcardio.cli import main
from mmcardio.commands.bench import SECTION_NAMES
from mmcardio.encoders.registry import get_config
from mmcardio.retrieval.index import IndexParams, build_faiss, default_nlist, default_nprobe

TINY = ["--batch-size", "2", "--repeats", "1", "--warmup", "0", "--n-vectors", "200"]
SPEED_KEYS = {"train_ms", "inference_ms", "train_over_inference"}


def _bench(argv: list[str], capsys) -> dict:
    assert main(["bench", "--json", *TINY, *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[dict, dict]:
    """Every section once at tiny sizes: the printed document and the one --out wrote."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bench", "--json", *TINY, "--out", str(out)]) == 0
    return json.loads(printed.getvalue()), json.loads(out.read_text(encoding="utf-8"))


def _numbers(node, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def test_document_has_every_section_and_positive_finite_measurements(full_run):
    document, _ = full_run
    assert list(document["sections"]) == list(SECTIONS)
    assert {"torch", "torch_threads", "cpu_count", "platform", "python"} <= set(document["machine"])
    assert document["machine"]["torch_threads"] == document["options"]["threads"] == 1
    assert document["date"] and document["baseline_rss_mib"] > 0
    sections = document["sections"]
    assert set(sections["towers"]["modalities"]) == set(get_config("cardioclip-tiny")["towers"])
    for tower in sections["towers"]["modalities"].values():
        assert SPEED_KEYS | {"parameters", "train_studies_per_s", "inference_studies_per_s"} <= set(tower)
    assert SPEED_KEYS | {"parameters", "mean_tokens_per_text", "train_texts_per_s",
                         "inference_texts_per_s"} <= set(sections["text"])
    for reader in sections["readers"]["files"].values():
        assert {"files", "megabytes", "ms_per_file", "megabytes_per_s", "shape"} <= set(reader)
    for kind in sections["index"]["kinds"].values():
        assert {"build_s", "queries_per_s", "recall_at_10"} <= set(kind)
    for section in sections.values():
        assert section["peak_rss_mib"] > 0
    for path, value in _numbers(sections):
        assert math.isfinite(value), path
        assert value >= 0 if "recall" in path else value > 0, path


def test_out_writes_the_printed_document(full_run):
    printed, written = full_run
    assert written == printed


def test_tower_inputs_follow_the_model_preprocess(full_run):
    towers = full_run[0]["sections"]["towers"]["modalities"]
    pre = get_config("cardioclip-tiny")["preprocess"]
    samples, windows = pre["ecg"]["samples"], pre["ecg"]["windows"]
    assert towers["ecg"]["train_input"] == [2, 12, samples]
    assert towers["ecg"]["inference_input"] == [2, windows, 12, samples]
    assert towers["echo"]["train_input"] == [2, pre["echo"]["max_views"], pre["echo"]["frames"],
                                             *pre["echo"]["size"]]
    assert towers["cmr"]["train_input"] == [2, pre["cmr"]["phases"], pre["cmr"]["slices"],
                                            *pre["cmr"]["size"]]
    assert towers["ct"]["train_input"] == [2, 1, *pre["ct"]["shape"]]


def test_index_recall_is_exact_for_flat_and_a_share_for_approximate_kinds(full_run):
    """Flat is the reference (exact: see the next test); HNSW at 200 vectors finds nearly all
    true neighbours; IVF searches nprobe of nlist lists, so at least that share of them. An
    index returning arbitrary ids scores about k / n = 0.05."""
    index = full_run[0]["sections"]["index"]
    kinds, n = index["kinds"], index["vectors"]
    assert n == 200 and index["k"] == 10
    assert kinds["flat"]["recall_at_10"] == 1.0
    assert kinds["hnsw"]["recall_at_10"] >= 0.95
    nlist = default_nlist(n)
    assert kinds["ivf"]["recall_at_10"] >= default_nprobe(nlist) / nlist > 10 / n


def test_flat_index_hits_are_the_exact_neighbours_and_recall_counts_shared_ids():
    rng = np.random.default_rng(0)
    vectors, queries = unit_vectors(200, 32, rng), unit_vectors(20, 32, rng)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(build_faiss(vectors, IndexParams(kind="flat")).search(queries, 10)[1], exact)
    found = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert recall(found, np.array([[3, 2, 9, 8], [4, 5, 6, 7]])) == pytest.approx((2 / 4 + 1) / 2)


def test_readers_read_the_pydicom_examples_as_pydicom_does(full_run):
    files = full_run[0]["sections"]["readers"]["files"]
    rhythm = pydicom.examples.waveform.WaveformSequence[0]
    assert files["dicom_ecg"]["shape"] == [rhythm.NumberOfWaveformChannels,
                                           rhythm.NumberOfWaveformSamples]
    echo = pydicom.examples.ybr_color
    assert files["dicom_echo"]["shape"] == [echo.NumberOfFrames, echo.Rows, echo.Columns,
                                            echo.SamplesPerPixel]
    series = files["dicom_ct_series"]
    assert series["files"] == series["shape"][0]  # one file per slice
    assert files["nifti_ct"]["shape"] == series["shape"]


def test_only_runs_the_named_sections(capsys):
    document = _bench(["--only", "index"], capsys)
    assert list(document["sections"]) == ["index"]
    assert document["options"]["sections"] == ["index"]


def test_table_without_json(capsys):
    assert main(["bench", *TINY, "--only", "index"]) == 0
    text = capsys.readouterr().out
    assert "recall@10" in text and "hnsw" in text and "peak RSS" in text


def test_unknown_section_is_an_error_naming_it_and_the_valid_ones(capsys):
    assert main(["bench", "--only", "towers,speed"]) == 2
    message = capsys.readouterr().err
    assert "'speed'" in message and "sections" in message
    for name in SECTIONS:
        assert name in message


def test_model_folder_without_config_is_an_error(tmp_path, capsys):
    assert main(["bench", "--model", str(tmp_path), "--only", "index"]) == 2
    message = capsys.readouterr().err
    assert str(tmp_path) in message and "config.json" in message and "'model'" in message


def test_cli_default_sections_are_the_library_sections():
    assert SECTION_NAMES.split(",") == list(SECTIONS)
