"""Speed and memory benchmarks (`mmcardio bench`): one function per section, each returning
a plain dict, and `run_benchmarks` that runs the chosen sections into one JSON document.

Every figure is measured in the same run as what it is compared with, timed in turn with it so
the ratio sees the same load on a shared machine: utilization against a dense matmul of the
dtype (at the size the peak section found fastest), the ECG tower against a plain reference
transformer, our training loop against a bare loop. Speed and memory are measured here and
never asserted in timed unit tests; compare two documents of one machine and options by
ratios, never by absolute numbers. The document records the machine and every setting.

The measurements live in `bench_measure` (time, FLOPs, memory, the matmul peak),
`bench_train` (towers, alignment step, reference, scaling) and `bench_loop` (our loop against
a bare one, data wait); this module holds the options, the models, the readers and index
sections, and the document.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pydicom.examples
import torch
from tqdm import tqdm

import mmcardio
from mmcardio.bench_loop import LoopPlan, bench_data, bench_loop, pretraining
from mmcardio.bench_measure import (
    DTYPES,
    MEMORY_METHOD,
    Matmul,
    matmul_peak,
    median_seconds,
    peak_memory,
    peak_probes,
    peak_rss_mib,
)
from mmcardio.bench_retrieval import QUICK_SIZES, SIZES, K, bench_retrieval, load_source
from mmcardio.bench_train import (
    BenchModel,
    Plan,
    ScalingSizes,
    bench_align,
    bench_reference,
    bench_scaling,
    bench_towers,
    parameter_count,
    phantom_report_parts,
)
from mmcardio.config import read_mapping
from mmcardio.datasets.readers.dicom_series import read_dicom_series
from mmcardio.datasets.readers.ecg import read_ecg
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.datasets.readers.video import read_video
from mmcardio.datasets.synthetic.anatomy import HeartParams
from mmcardio.datasets.synthetic.ct import make_ct
from mmcardio.datasets.writers.dicom import write_dicom_series
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.encoders.registry import get_config, list_configs
from mmcardio.errors import MMCardioError
from mmcardio.model import CardioCLIP, create_model
from mmcardio.model_config import CONFIG_FILE, CardioCLIPConfig, build_config

SECTIONS = ("peak", "towers", "align", "reference", "scaling", "loop", "data", "readers", "index")
#: Sections measured per model (their MFU needs "peak", which they bring in).
MODEL_SECTIONS = ("towers", "align", "reference", "scaling")
#: Sections run on a pretraining setup of the first model over a phantom cohort.
LOOP_SECTIONS = ("loop", "data")
DEFAULT_MODELS = ("cardioclip-tiny", "cardioclip-base")
#: Models with more parameters than this are measured with `large_batch_size` and
#: `large_repeats` (a base tower takes seconds per study on a CPU).
LARGE_MODEL_PARAMETERS = 20_000_000
#: What `--quick` changes: the tiny model alone, fewer repeats, a smaller cohort and index.
QUICK = {"models": ("cardioclip-tiny",), "repeats": 3, "peak_sizes": (1024,), "cohort_studies": 8,
         "loop_rounds": 2, "data_steps": 3, "index_sizes": QUICK_SIZES}
TEXT_CHOICES = ("tiny", "config")
#: The scratch text tower's vocabulary is learned from this many phantom reports, whatever the
#: batch size, so tokens per text compare across runs.
TOKENIZER_REPORTS = 64
#: What the figures' keys mean (a key ending in a name here has its unit).
UNITS = {
    "ms": "milliseconds per call: one training step (forward, backward, AdamW) or inference "
          "pass of `samples` samples, or one loop step; the median of the repeats",
    "samples_per_s": "samples (studies, ECGs, texts) per second",
    "steps_per_s": "optimizer steps per second",
    "gflop_per_sample": "1e9 floating-point operations per sample (matmuls, convolutions, "
                        "attention), counted by torch.utils.flop_counter.FlopCounterMode",
    "gflop_per_s": "achieved 1e9 FLOPs per second (gflop_per_sample x samples_per_s)",
    "mfu": "model FLOPs utilization: gflop_per_s over peak_gflop_per_s, the dense matmul rate of "
           "the dtype timed in turn with the measurement (at the size sections.peak found "
           "fastest), 0-1",
    "memory_mib": "MiB of peak resident memory during the measurement above the memory before "
                  "it (see memory_method)",
    "peak_rss_mib": "MiB of the process's peak resident memory during the measurement",
    "wait_share": "time waiting for the next batch over step time, 0-1",
    "overhead": "our loop's step time over the bare loop's, minus 1",
    "ratio": "ours over the reference (flops_ratio, samples_per_s_ratio, memory_ratio)",
    "_s": "seconds",
}


@dataclass
class BenchOptions:
    """What to benchmark and how.

    models: built-in config names (random weights: speed does not depend on their values) or
        CardioCLIP folders (e.g. RUN/final).
    text: the text tower of built-in configs: "tiny" (text-tiny, built offline), "config"
        (the config's own; cardioclip-base's is downloaded from the Hugging Face hub) or a
        folder holding a transformers model. A model folder always uses its own.
    batch_size, repeats: of models up to LARGE_MODEL_PARAMETERS; larger models use
        large_batch_size and large_repeats. warmup: untimed calls before each measurement
        (model measurements make at least one: it counts FLOPs and takes the peak memory).
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    text: str = "tiny"
    sections: tuple[str, ...] = SECTIONS
    batch_size: int = 8
    repeats: int = 5
    large_batch_size: int = 2
    large_repeats: int = 1
    warmup: int = 1
    threads: int = 1
    dtypes: tuple[str, ...] = tuple(DTYPES)
    peak_sizes: tuple[int, ...] = (1024, 2048)
    ecg_seconds: tuple[float, ...] = ScalingSizes.ecg_seconds
    echo_frames: tuple[int, ...] = ScalingSizes.echo_frames
    ct_sizes: tuple[int, ...] = ScalingSizes.ct_sizes
    cohort_studies: int = 24
    loop_steps: int = 10
    loop_rounds: int = 5
    data_steps: int = 8
    index_sizes: tuple[int, ...] = SIZES
    index_source: str | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type.startswith("tuple"):
                setattr(self, f.name, tuple(getattr(self, f.name)))
        self._check_choices("sections", self.sections, SECTIONS)
        self._check_choices("dtypes", self.dtypes, tuple(DTYPES))
        if not self.models:
            raise MMCardioError("expected at least one model", field="models")
        lowest = {"batch_size": 1, "repeats": 1, "large_batch_size": 1, "large_repeats": 1,
                  "warmup": 0, "threads": 1, "cohort_studies": 2, "loop_steps": 1, "loop_rounds": 1,
                  "data_steps": 1}
        for name, least in lowest.items():
            if getattr(self, name) < least:
                raise MMCardioError(f"expected at least {least}, got {getattr(self, name)}", field=name)
        if min(self.index_sizes, default=0) < 10 * K:
            raise MMCardioError(f"expected sizes of at least {10 * K} vectors, got {list(self.index_sizes)}",
                                field="index_sizes")
        for name in ("peak_sizes", "ecg_seconds", "echo_frames", "ct_sizes"):
            if not getattr(self, name) or min(getattr(self, name)) <= 0:
                raise MMCardioError(f"expected positive sizes, got {list(getattr(self, name))}", field=name)

    @staticmethod
    def _check_choices(field: str, given: tuple[str, ...], known: tuple[str, ...]) -> None:
        unknown = [s for s in given if s not in known]
        if unknown or not given:
            raise MMCardioError(
                f"unknown {field} {', '.join(map(repr, unknown)) or '(none given)'}; expected "
                f"a comma-separated list of {', '.join(known)}", field=field)

    @classmethod
    def quick_run(cls, **given: Any) -> BenchOptions:
        """The options of `--quick` (QUICK), with `given` ones on top."""
        return cls(**{**QUICK, **given, "quick": True})

    @property
    def ordered_sections(self) -> list[str]:
        """The sections to run, in SECTIONS order, with "peak" when a model section needs it."""
        wanted = set(self.sections) | ({"peak"} if set(MODEL_SECTIONS) & set(self.sections) else set())
        return [s for s in SECTIONS if s in wanted]

    @property
    def scaling_sizes(self) -> ScalingSizes:
        return ScalingSizes(self.ecg_seconds, self.echo_frames, self.ct_sizes)

    def plan(self, model: torch.nn.Module) -> Plan:
        if parameter_count(model) > LARGE_MODEL_PARAMETERS:
            return Plan(self.large_batch_size, self.large_repeats, self.warmup)
        return Plan(self.batch_size, self.repeats, self.warmup)


# ------------------------------------------------------------------------------ measuring

def median_ms(run: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of `run` in ms over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    return 1000 * median_seconds({"run": run}, repeats)["run"]


@contextlib.contextmanager
def measuring(bar: tqdm | None, label: str) -> Iterator[None]:
    """One step of the progress bar (if any), named while it runs."""
    if bar is not None:
        bar.set_postfix_str(label)
    yield
    if bar is not None:
        bar.update()


@contextlib.contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """torch and FAISS (OpenMP) on `threads` threads, restored afterwards."""
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


# ------------------------------------------------------------------------------ the models

def builtin_models() -> list[str]:
    """Built-in configs of whole models (the encoder configs have no towers)."""
    return [name for name in list_configs() if "towers" in get_config(name)]


def model_config(name_or_folder: str) -> CardioCLIPConfig:
    """The validated config of a built-in model name or a CardioCLIP folder."""
    path, builtins = Path(name_or_folder), builtin_models()
    expected = (f"expected a built-in model config ({', '.join(builtins)}) or a "
                f"CardioCLIP folder written by save_pretrained (e.g. RUN/final)")
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise MMCardioError(f"the folder has no {CONFIG_FILE}; {expected}", path, "model")
        return build_config(read_mapping(path / CONFIG_FILE), str(path / CONFIG_FILE))
    if name_or_folder not in builtins:
        raise MMCardioError(f"no such folder or built-in config {name_or_folder!r}; {expected}",
                            field="model")
    return build_config(get_config(name_or_folder), name_or_folder)


def text_overrides(name: str, text: str) -> dict[str, Any]:
    """The `text` config override that gives built-in model `name` the text tower `text`
    asks for (see BenchOptions): {} for "config"; a model folder keeps the config's pooling
    and length."""
    if text == "config" or Path(name).is_dir():
        return {}
    if text == "tiny":
        return {"text": "text-tiny"}
    folder = Path(text).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise MMCardioError(f"expected {' or '.join(TEXT_CHOICES)}, or a folder holding a "
                            "transformers model (config.json, weights, tokenizer files)", folder, "text")
    spec = get_config(name)["text"]
    spec = get_config(spec) if isinstance(spec, str) else spec
    return {"text": {**{k: v for k, v in spec.items() if k != "scratch"},
                     "model_name_or_path": str(folder)}}


def load_model(name: str, options: BenchOptions) -> BenchModel:
    """The model to measure (nothing is downloaded unless `text` is "config" and the config's
    text tower is a hub name), its scratch text vocabulary learned from phantom reports."""
    overrides = text_overrides(name, options.text)
    model: CardioCLIP = create_model(name, **overrides)
    if model.text.needs_tokenizer:
        model.text.fit_tokenizer(phantom_reports(TOKENIZER_REPORTS))
    text = "the model folder's" if Path(name).is_dir() else overrides.get("text", "the config's")
    return BenchModel(name, model, text if isinstance(text, str) else text["model_name_or_path"],
                      options.plan(model))


def phantom_reports(n: int) -> list[str]:
    """`n` phantom cohort reports, English and Chinese in turn."""
    return [report for report, _ in phantom_report_parts(n)]


# ------------------------------------------------------------------------------ files, index

def file_bytes(path: Path) -> tuple[int, int]:
    """(files, bytes) of a file or of a folder's files."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return len(files), sum(p.stat().st_size for p in files)


def bench_reader(path: Path, read: Callable[[Path], Any], array: str, options: BenchOptions
                 ) -> dict:
    """ms per file and MB/s of reading `path` with `read`, the shape of the record's `array`,
    and the memory of one read."""
    files, size = file_bytes(path)
    with peak_memory() as memory:
        shape = list(getattr(read(path), array).shape)
    ms = median_ms(lambda: read(path), options.repeats, max(options.warmup - 1, 0))
    return {"files": files, "megabytes": size / 1e6, "ms": ms, "ms_per_file": ms / files,
            "megabytes_per_s": size / 1e6 / (ms / 1000), "shape": shape, **memory}


def bench_readers(options: BenchOptions, bar: tqdm | None = None) -> dict:
    """mmcardio's readers on the 12-lead ECG and the echo cine pydicom ships, and on a phantom
    cardiac CT written as a DICOM series and as NIfTI (no real CT ships anywhere)."""
    with tempfile.TemporaryDirectory(prefix="mmcardio-bench-") as tmp:
        volume = make_ct(HeartParams(), np.random.default_rng(0)).volume
        series = write_dicom_series(volume, Path(tmp) / "ct_series")
        nifti = write_nifti(volume, Path(tmp) / "ct.nii.gz")
        cases = {  # name: (path, reader, array attribute of its record)
            "dicom_ecg": (pydicom.examples.get_path("waveform"), read_ecg, "signal"),
            "dicom_echo": (pydicom.examples.get_path("ybr_color"), read_video, "frames"),
            "dicom_ct_series": (series, read_dicom_series, "array"),
            "nifti_ct": (nifti, read_nifti, "array"),
        }
        files = {}
        for name, (path, read, array) in cases.items():
            with measuring(bar, name):
                files[name] = {"source": path.name, **bench_reader(path, read, array, options)}
    return {"files": files}


# ------------------------------------------------------------------------------ the document

def cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems)."""
    return _cpuinfo("model name") or platform.processor()


def _cpuinfo(key: str) -> str:
    """The first value of `key` in /proc/cpuinfo ("" where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")


def machine_facts() -> dict[str, Any]:
    """What two runs must share for their numbers to compare."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = set(_cpuinfo("flags").split())
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": cpu_model(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "matrix_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "faiss": faiss.__version__,
            "numpy": np.__version__, "mmcardio": mmcardio.__version__}


def run_benchmarks(options: BenchOptions, progress: bool = False) -> dict[str, Any]:
    """Run the chosen sections (in SECTIONS order) and return the JSON-ready document."""
    configs = {name: model_config(name) for name in options.models}  # refuse bad names first
    sections = options.ordered_sections
    with thread_count(options.threads), tqdm(desc="bench", unit="measurement",
                                             disable=not progress) as bar:
        document: dict[str, Any] = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "options": {**asdict(options), "sections": sections},
            "machine": machine_facts(), "memory_method": MEMORY_METHOD, "units": UNITS,
            "baseline_rss_mib": peak_rss_mib(), "models": {}, "sections": {},
        }
        results = document["sections"]

        def tick(label: str) -> None:
            bar.update()
            bar.set_postfix_str(label)

        if "peak" in sections:
            tick("peak")
            results["peak"] = {"threads": options.threads, **matmul_peak(options.peak_sizes, options.repeats,
                                                                          options.warmup)}
        probes = peak_probes(results["peak"]) if "peak" in sections else {}
        for name in options.models if set(MODEL_SECTIONS) & set(sections) else []:
            bench = load_model(name, options)
            document["models"][name] = {"parameters": parameter_count(bench.model),
                                        "text_tower": bench.text_tower, "plan": asdict(bench.plan)}
            for section, result in _model_sections(bench, options, sections, probes, tick):
                results.setdefault(section, {})[name] = result
        if set(LOOP_SECTIONS) & set(sections):
            results.update(_loop_sections(options, sections, tick))
        if "readers" in sections:
            results["readers"] = bench_readers(options, bar)
        if "index" in sections:
            source = load_source(options.index_source) if options.index_source else None
            results["index"] = bench_retrieval(configs[options.models[0]].embed_dim, options.index_sizes,
                                               options, bar, source)
    return document


def _model_sections(bench: BenchModel, options: BenchOptions, sections: list[str],
                    probes: dict[str, Matmul], tick: Callable[[str], None]) -> Iterator[tuple[str, dict]]:
    run = {"towers": lambda: bench_towers(bench, probes, tick),
           "align": lambda: bench_align(bench, options.dtypes, probes, tick),
           "reference": lambda: bench_reference(bench, probes, tick),
           "scaling": lambda: bench_scaling(bench, options.scaling_sizes, probes, tick)}
    for section in MODEL_SECTIONS:
        if section in sections and (section != "reference" or "ecg" in bench.model.towers):
            yield section, run[section]()


def _loop_sections(options: BenchOptions, sections: list[str], tick: Callable[[str], None]) -> dict:
    """Our loop and the data wait, on an alignment run of the first model at `batch_size`."""
    name = options.models[0]
    tick(f"{name} phantom cohort and cache")
    model = str(Path(name) / CONFIG_FILE) if Path(name).is_dir() else name
    plan = LoopPlan(options.cohort_studies, options.batch_size, options.loop_steps, options.loop_rounds,
                    options.data_steps)
    results = {}
    with pretraining(model, text_overrides(name, options.text), plan) as setup:
        if "loop" in sections:
            results["loop"] = {"model": name, **bench_loop(setup, plan, tick)}
        if "data" in sections:
            results["data"] = {"model": name, **bench_data(setup, plan, tick)}
    return results

