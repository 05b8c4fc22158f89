"""`mmcardio bench`: the JSON document of a quick run (sections, keys, units, MFU between 0 and
1, the reference and its ratios), the FLOP count, the memory measurement, the plain reference,
--only, --out, --text, errors, and what the readers read. No timing thresholds: speed is
measured by the benchmark, never asserted here."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import pydicom.examples
import pytest
import torch
from torch import nn

from mmcardio.bench import (
    QUICK,
    SECTIONS,
    UNITS,
    BenchOptions,
    load_model,
    text_overrides,
)
from mmcardio.bench_measure import (
    PEAK_RESETS,
    Workload,
    measure,
    median_seconds,
    peak_memory,
    peak_probes,
)
from mmcardio.bench_reference import PlainECGTransformer
from mmcardio.bench_train import align_batch
from mmcardio.cli import main
from mmcardio.commands.bench import SECTION_NAMES, table
from mmcardio.encoders.registry import get_config
from mmcardio.errors import MMCardioError
from mmcardio.flops import count_flops
from mmcardio.model import create_model

#: A quick run at the smallest sizes that still exercise every section.
SMALL = ["--batch-size", "2", "--repeats", "1", "--warmup", "1", "--index-sizes", "1000",
         "--peak-sizes", "1024", "--cohort-studies", "4", "--loop-steps", "2", "--loop-rounds", "1",
         "--data-steps", "1", "--ecg-seconds", "2.5,5", "--echo-frames", "8,16", "--ct-sizes", "32,48"]
FIGURE_KEYS = {"dtype", "samples", "ms", "samples_per_s", "gflop_per_sample", "gflop_per_s",
               "peak_gflop_per_s", "mfu", "memory_mib", "peak_rss_mib"}
TINY_TOWERS = set(get_config("cardioclip-tiny")["towers"])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, dict]:
    """`bench --quick` once at tiny sizes: the printed document and the one --out wrote."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bench", "--quick", "--json", *SMALL, "--out", str(out)]) == 0
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


def _figures(node):
    """Every measurement's figures in the document (dicts with an MFU)."""
    if isinstance(node, dict):
        if "mfu" in node:
            yield node
        for value in node.values():
            yield from _figures(value)
    elif isinstance(node, list):
        for value in node:
            yield from _figures(value)


def _check_figures(figures: dict, dtype: str, samples: int) -> None:
    assert set(figures) == FIGURE_KEYS
    assert figures["dtype"] == dtype and figures["samples"] == samples
    assert figures["mfu"] > 0  # below 1 on an idle machine; load can slow the peak probe more (see table)
    assert figures["mfu"] == pytest.approx(figures["gflop_per_s"] / figures["peak_gflop_per_s"])
    assert figures["samples_per_s"] == pytest.approx(1000 * samples / figures["ms"])
    assert figures["gflop_per_s"] == pytest.approx(figures["gflop_per_sample"] * figures["samples_per_s"])


def test_quick_document_records_the_machine_options_units_and_every_section(quick_run):
    document, _ = quick_run
    assert list(document["sections"]) == list(SECTIONS)
    options = document["options"]
    assert options["quick"] is True and options["models"] == list(QUICK["models"]) == ["cardioclip-tiny"]
    assert options["batch_size"] == 2 and options["cohort_studies"] == 4 and options["threads"] == 1
    assert {"torch", "torch_threads", "cpu_count", "usable_cpus", "processor", "matrix_flags"} \
        <= set(document["machine"])
    assert document["machine"]["torch_threads"] == 1
    assert "VmHWM" in document["memory_method"] or "ru_maxrss" in document["memory_method"]
    assert {"ms", "gflop_per_sample", "mfu", "memory_mib", "wait_share", "overhead"} <= set(document["units"])
    assert document["units"] == UNITS
    model = document["models"]["cardioclip-tiny"]
    assert model["plan"] == {"batch_size": 2, "repeats": 1, "warmup": 1}
    assert model["text_tower"] == "text-tiny" and model["parameters"] > 0


def test_every_number_is_finite_and_positive_where_it_must_be(quick_run):
    """Shares, recalls, memory deltas and the loop's overhead may be 0 (or, the overhead,
    negative); every other figure is a positive rate, time, count or ratio."""
    for path, value in _numbers(quick_run[0]["sections"]):
        assert math.isfinite(value), path
        if path.endswith((".overhead",)):
            continue
        if any(key in path for key in ("recall", "memory_mib", "wait_share", "wait_ms")):
            assert value >= 0, path
        else:
            assert value > 0, path


def test_peak_measures_both_dtypes_and_every_mfu_divides_by_a_peak(quick_run):
    sections = quick_run[0]["sections"]
    peak = sections["peak"]
    assert peak["threads"] == 1
    for dtype in ("fp32", "bf16"):
        assert peak[dtype]["size"] == 1024 and list(peak[dtype]["by_size"]) == ["1024"]
        assert peak[dtype]["gflop_per_s"] == peak[dtype]["by_size"]["1024"] > 0
    figures = list(_figures(sections))
    assert len(figures) == 5 * 2 + 2 + 2 + 6  # towers and text, align, reference, scaling
    for f in figures:
        assert 0 < f["mfu"] < 1 and f["peak_gflop_per_s"] > 0


def test_towers_train_and_infer_every_modality_and_the_text(quick_run):
    towers = quick_run[0]["sections"]["towers"]["cardioclip-tiny"]
    assert set(towers) == TINY_TOWERS | {"text"}
    pre = get_config("cardioclip-tiny")["preprocess"]
    samples, windows = pre["ecg"]["samples"], pre["ecg"]["windows"]
    assert towers["ecg"]["train_input"] == [2, 12, samples]
    assert towers["ecg"]["inference_input"] == [2, windows, 12, samples]
    assert towers["echo"]["train_input"] == [2, pre["echo"]["max_views"], pre["echo"]["frames"],
                                             *pre["echo"]["size"]]
    assert towers["ct"]["train_input"] == [2, 1, *pre["ct"]["shape"]]
    for tower in towers.values():
        assert tower["parameters"] > 0
        _check_figures(tower["train"], "fp32", 2)
        _check_figures(tower["inference"], "fp32", 2)
    # the ECG's inference pass reads `windows` crops of each study in one forward pass
    ecg = towers["ecg"]
    assert ecg["inference"]["gflop_per_sample"] > ecg["train"]["gflop_per_sample"] / 3
    assert towers["text"]["texts"] == 2 and towers["text"]["mean_tokens_per_text"] > 1


def test_align_step_in_both_dtypes_counts_the_same_flops(quick_run):
    align = quick_run[0]["sections"]["align"]["cardioclip-tiny"]
    assert align["studies"] == 2 and set(align["modalities"]) == TINY_TOWERS
    _check_figures(align["fp32"], "fp32", 2)
    _check_figures(align["bf16"], "bf16", 2)
    assert align["fp32"]["gflop_per_sample"] == align["bf16"]["gflop_per_sample"]
    assert align["bf16_speedup"] == pytest.approx(align["fp32"]["ms"] / align["bf16"]["ms"])
    towers = quick_run[0]["sections"]["towers"]["cardioclip-tiny"]
    tower_flops = sum(towers[m]["train"]["gflop_per_sample"] for m in TINY_TOWERS)
    assert align["fp32"]["gflop_per_sample"] > tower_flops  # every tower, and the text on top


def test_reference_is_the_plain_transformer_of_the_ecg_config_with_its_ratios(quick_run):
    reference = quick_run[0]["sections"]["reference"]["cardioclip-tiny"]
    ecg = get_config(get_config("cardioclip-tiny")["towers"]["ecg"])
    samples = get_config("cardioclip-tiny")["preprocess"]["ecg"]["samples"]
    patch = round(ecg["input_fs"] * ecg["patch_ms"] / 1000)
    assert reference["input"] == [2, 12, samples]
    assert reference["reference_tokens"] == samples // patch + 1
    assert reference["config"]["width"] == ecg["width"] and reference["config"]["depth"] == ecg["depth"]
    ours, ref = reference["ours"], reference["reference"]
    _check_figures(ours, "fp32", 2)
    _check_figures(ref, "fp32", 2)
    assert reference["flops_ratio"] == pytest.approx(ours["gflop_per_sample"] / ref["gflop_per_sample"])
    assert reference["samples_per_s_ratio"] == pytest.approx(ours["samples_per_s"] / ref["samples_per_s"])
    assert reference["target_flops_ratio"] == 2.0
    plain = PlainECGTransformer.like(ecg, samples, get_config("cardioclip-tiny")["embed_dim"])
    assert reference["parameters"]["reference"] == sum(p.numel() for p in plain.parameters())


def test_scaling_steps_through_the_sizes_and_flops_grow_with_them(quick_run):
    axes = quick_run[0]["sections"]["scaling"]["cardioclip-tiny"]
    assert set(axes) == {"ecg_seconds", "echo_frames", "ct_size"}
    fs = get_config(get_config("cardioclip-tiny")["towers"]["ecg"])["input_fs"]
    assert [p["input"][-1] / fs for p in axes["ecg_seconds"]] == [p["seconds"] for p in axes["ecg_seconds"]]
    assert [p["frames"] for p in axes["echo_frames"]] == [8, 16]
    assert [p["size"] for p in axes["ct_size"]] == [32, 48]
    assert axes["ct_size"][1]["input"] == [2, 1, 48, 48, 48]
    for points in axes.values():
        for p in points:
            _check_figures({k: v for k, v in p.items() if k in FIGURE_KEYS}, "fp32", 2)
        flops = [p["gflop_per_sample"] for p in points]
        assert flops == sorted(flops) and flops[0] < flops[-1]


def test_loop_and_data_sections_compare_our_loop_and_the_cache(quick_run):
    sections = quick_run[0]["sections"]
    loop, data = sections["loop"], sections["data"]
    assert loop["model"] == data["model"] == "cardioclip-tiny"
    assert loop["steps_per_round"] == 2 and loop["rounds"] == 1 and loop["log_every"] == 10
    assert loop["ours_over_bare"] == pytest.approx(loop["ours"]["ms"] / loop["bare"]["ms"])  # one round
    assert loop["overhead"] == pytest.approx(loop["ours_over_bare"] - 1)
    assert loop["target_overhead"] == 0.05
    assert loop["checkpoint_share"] == pytest.approx(
        loop["checkpoint_s"] / (loop["checkpoint_every"] * loop["ours"]["ms"] / 1000))
    assert data["num_workers"] == 1 and data["steps"] == 1 and data["target_wait_share"] == 0.05
    for source in ("cache", "files"):
        assert 0 <= data[source]["wait_share"] < 1
        assert data[source]["wait_ms_per_step"] <= data[source]["ms"]


def test_out_writes_the_printed_document(quick_run):
    printed, written = quick_run
    assert written == printed


def test_table_warns_of_an_mfu_above_one(quick_run):
    document = copy.deepcopy(quick_run[0])
    document["sections"]["align"]["cardioclip-tiny"]["fp32"]["mfu"] = 1.2
    assert "warning: MFU above 100% in align/cardioclip-tiny/fp32" in table(document)


def test_table_shows_peak_mfu_reference_loop_and_data(quick_run):
    text = table(quick_run[0])
    for shown in ("peak matmul GFLOP/s", "MFU", "ours/reference: FLOPs", "overhead", "wait share",
                  "from cache", "from files", "bf16 over fp32", "ecg_seconds", "recall@10", "mem MiB"):
        assert shown in text, shown


def test_index_section_measures_each_kind_at_each_size_of_both_distributions(quick_run):
    """Flat is exact; the approximate kinds are reported at a setting reaching the recall target
    (1,000 vectors: reachable); the figures bench_retrieval's own tests check in depth."""
    index = quick_run[0]["sections"]["index"]
    assert index["sizes"] == [1000] and index["k"] == 10 and index["dim"] == 64
    for distribution in ("structured", "isotropic"):
        kinds = index["distributions"][distribution]["1000"]
        assert list(kinds) == ["flat", "ivf", "hnsw"]
        assert kinds["flat"]["recall_at_10"] == 1.0 and kinds["flat"]["bytes_per_vector"] == pytest.approx(4 * 64, rel=0.01)
        assert all(kinds[k]["recall_at_10"] >= 0.95 for k in ("ivf", "hnsw"))
        assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["api_over_faiss"] > 0 for r in kinds.values())
        assert index["target"][distribution]["met"] is False  # 1,000 vectors, not the 1M target


def test_readers_read_the_pydicom_examples_as_pydicom_does(quick_run):
    files = quick_run[0]["sections"]["readers"]["files"]
    rhythm = pydicom.examples.waveform.WaveformSequence[0]
    assert files["dicom_ecg"]["shape"] == [rhythm.NumberOfWaveformChannels,
                                           rhythm.NumberOfWaveformSamples]
    echo = pydicom.examples.ybr_color
    assert files["dicom_echo"]["shape"] == [echo.NumberOfFrames, echo.Rows, echo.Columns,
                                            echo.SamplesPerPixel]
    series = files["dicom_ct_series"]
    assert series["files"] == series["shape"][0]  # one file per slice
    assert files["nifti_ct"]["shape"] == series["shape"]


# ------------------------------------------------------------------------------ measuring

def test_flop_count_includes_cpu_attention():
    """A pre-norm layer, batch 2, 100 tokens, width 64, MLP 128, forward and backward:
    matmuls 3 x 2 x 200 x (64 x 192 + 64 x 64 + 2 x 64 x 128) = 39,321,600; attention forward
    4 x 2 x 100^2 x 64 = 5,120,000 and its backward 2.5 times that (torch's formulas)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, 0.0, "gelu", batch_first=True, norm_first=True)
    x = torch.randn(2, 100, 64)
    assert count_flops(lambda: layer(x).sum().backward()) == 39_321_600 + 5_120_000 + 12_800_000


def test_inference_flops_are_counted_though_the_fused_kernel_hides_them():
    """In eval mode without gradients nn.TransformerEncoderLayer runs one fused kernel that
    FlopCounterMode does not see; a Workload's `count` runs the same matmuls with gradients."""
    layer = nn.TransformerEncoderLayer(64, 4, 128, 0.0, "gelu", batch_first=True, norm_first=True).eval()
    x = torch.randn(2, 100, 64)
    with torch.no_grad():
        assert count_flops(lambda: layer(x)) == 0
    assert count_flops(lambda: layer(x)) == 13_107_200 + 5_120_000


def test_plain_reference_has_one_token_per_time_patch_and_the_config_sizes():
    config = {"width": 64, "depth": 2, "heads": 4, "mlp_ratio": 2.0, "input_fs": 250.0, "patch_ms": 200.0}
    reference = PlainECGTransformer.like(config, 1250, 32)
    assert reference.tokens == 26 and reference.stem.in_features == 12 * 50
    assert len(reference.encoder.layers) == 2
    assert reference.encoder.layers[0].linear1.out_features == 128
    out = reference(torch.randn(3, 12, 1250))
    assert out.shape == (3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_median_seconds_takes_turns_between_the_runs():
    calls = []
    seconds = median_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 3 and set(seconds) == {"a", "b"}


@pytest.mark.skipif(not PEAK_RESETS, reason="the kernel's peak mark cannot be reset here")
def test_peak_memory_sees_an_allocation_freed_inside_the_block():
    with peak_memory() as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB of float32, touched
        del block
    assert 60 <= memory["memory_mib"] < 200
    with peak_memory() as quiet:
        pass
    assert quiet["memory_mib"] < 16


def test_measure_counts_flops_once_and_times_each_workload_beside_a_peak_probe():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    calls = []

    def matmul():
        calls.append("run")
        return a @ b

    probes = peak_probes({dtype: {"size": 64} for dtype in ("fp32", "bf16")})
    figures = measure({"mm": Workload(matmul, samples=4)}, probes, repeats=2, warmup=2)["mm"]
    assert calls == ["run"] * 4  # the counted first call, one more warm-up, two timed
    assert figures["gflop_per_sample"] == pytest.approx(2 * 64**3 / 4 / 1e9)
    assert figures["samples"] == 4 and figures["dtype"] == "fp32"


# ------------------------------------------------------------------------------ models, inputs

def test_align_batch_is_collated_as_pretraining_takes_it():
    model = create_model("cardioclip-tiny")
    batch = align_batch(model, 3, torch.Generator().manual_seed(0))
    assert len(batch["study_id"]) == len(batch["text"]) == len(batch["text_view"]) == 3
    for m in model.modalities:
        assert batch[m]["rows"].tolist() == [0, 1, 2] and len(batch[m]["report"]) == 3
    assert all(isinstance(t, str) and t for t in batch["text"])


def test_text_option_chooses_the_text_tower_of_builtin_configs(tmp_path):
    assert text_overrides("cardioclip-base", "tiny") == {"text": "text-tiny"}
    assert text_overrides("cardioclip-base", "config") == {}
    with pytest.raises(MMCardioError) as err:
        text_overrides("cardioclip-base", str(tmp_path))
    assert err.value.field == "text" and str(tmp_path) in str(err.value)


def test_base_model_builds_offline_with_a_local_text_tower(tmp_path, monkeypatch):
    """A folder holding a transformers model replaces cardioclip-base's hub text tower; with
    HF_HUB_OFFLINE nothing may be downloaded. The base model is measured as a large one."""
    from transformers import BertConfig, BertModel

    from mmcardio.encoders.text import TextEncoder, TextEncoderConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scratch = TextEncoder(TextEncoderConfig(scratch={"vocab_size": 200, "hidden_size": 32,
                                                     "num_hidden_layers": 1, "num_attention_heads": 2,
                                                     "intermediate_size": 64}))
    scratch.fit_tokenizer(["sinus rhythm", "atrial fibrillation", "sinus rhythm"])
    scratch.tokenizer.save_pretrained(tmp_path)
    BertModel(BertConfig(vocab_size=len(scratch.tokenizer), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    bench = load_model("cardioclip-base", BenchOptions(text=str(tmp_path)))
    assert bench.model.text.width == 32 and bench.text_tower == str(tmp_path.resolve())
    assert bench.plan.batch_size == 2 and bench.plan.repeats == 1
    assert bench.model.encode_text(["sinus rhythm"]).shape == (1, bench.model.config.embed_dim)


def test_quick_options_are_the_tiny_model_with_fewer_repeats():
    quick = BenchOptions.quick_run(batch_size=4)
    assert quick.models == ("cardioclip-tiny",) and quick.repeats == 3 and quick.batch_size == 4
    assert quick.quick and not BenchOptions().quick
    assert BenchOptions().models == ("cardioclip-tiny", "cardioclip-base")


def test_model_sections_bring_in_the_peak():
    assert BenchOptions(sections=("towers",)).ordered_sections == ["peak", "towers"]
    assert BenchOptions(sections=("index", "loop")).ordered_sections == ["loop", "index"]


# ------------------------------------------------------------------------------ the command

def test_only_runs_the_named_sections(capsys):
    assert main(["bench", "--json", *SMALL, "--only", "index"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert list(document["sections"]) == ["index"] and document["options"]["sections"] == ["index"]
    assert document["models"] == {}


def test_table_without_json(capsys):
    assert main(["bench", *SMALL, "--only", "index"]) == 0
    text = capsys.readouterr().out
    assert "recall@10" in text and "hnsw" in text and "mem MiB" in text


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
