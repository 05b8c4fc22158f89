"""Speed and memory benchmarks (`mmcardio bench`): one function per section, each returning
a plain dict, and `run_benchmarks` that runs the chosen sections into one JSON document.

Speed and memory are measured here and never asserted in timed unit tests: test machines are
shared and noisy. Compare two documents of the same machine and options by ratios of the same
measurement; the document records the machine facts that make such a comparison fair.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pydicom.examples
import torch
from tqdm import tqdm

import mmcardio
from mmcardio.config import read_mapping
from mmcardio.datasets.preprocess_config import as_preprocess
from mmcardio.datasets.readers.dicom_series import read_dicom_series
from mmcardio.datasets.readers.ecg import read_ecg
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.datasets.readers.video import read_video
from mmcardio.datasets.synthetic.anatomy import HeartParams
from mmcardio.datasets.synthetic.cohort import cohort_truths
from mmcardio.datasets.synthetic.ct import make_ct
from mmcardio.datasets.synthetic.reports import write_report
from mmcardio.datasets.writers.dicom import write_dicom_series
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.encoders.ecg import N_LEADS
from mmcardio.encoders.registry import get_config, list_configs
from mmcardio.errors import MMCardioError
from mmcardio.modality import ECHO_VIEWS
from mmcardio.model import CardioCLIP, create_model
from mmcardio.model_config import CONFIG_FILE, CardioCLIPConfig, build_config
from mmcardio.retrieval.index import IndexParams, build_faiss
from mmcardio.retrieval.keys import KINDS
from mmcardio.study import LANGUAGES

SECTIONS = ("towers", "text", "readers", "index")
#: Measurements each section makes (the progress bar's steps), apart from the towers' two
#: (training and inference) per modality.
STEPS = {"text": 2, "readers": 4, "index": len(KINDS)}
QUERIES, TOP_K = 100, 10
#: The scratch text tower's vocabulary is learned from this many phantom reports, whatever the
#: batch size, so tokens per text compare across runs.
TOKENIZER_REPORTS = 64
MIB = 2**20


@dataclass
class BenchOptions:
    """What to benchmark and how. model: a built-in config name (random weights: speed does
    not depend on their values) or a CardioCLIP folder (e.g. RUN/final)."""

    model: str = "cardioclip-tiny"
    sections: tuple[str, ...] = SECTIONS
    batch_size: int = 8
    repeats: int = 5
    warmup: int = 1
    threads: int = 1
    n_vectors: int = 20000

    def __post_init__(self) -> None:
        self.sections = tuple(self.sections)
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown or not self.sections:
            raise MMCardioError(
                f"unknown section(s) {', '.join(map(repr, unknown)) or '(none given)'}; expected "
                f"a comma-separated list of {', '.join(SECTIONS)}", field="sections")
        for name, lowest in (("batch_size", 1), ("repeats", 1), ("warmup", 0), ("threads", 1),
                             ("n_vectors", TOP_K)):
            if getattr(self, name) < lowest:
                raise MMCardioError(f"expected at least {lowest}, got {getattr(self, name)}",
                                    field=name)

    @property
    def ordered_sections(self) -> list[str]:
        """The chosen sections in SECTIONS order: the peak memory each reports is the process's
        peak so far, so a fixed order keeps it comparable between runs."""
        return [s for s in SECTIONS if s in self.sections]


# ------------------------------------------------------------------------------ measuring

def peak_rss_mib() -> float:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (MIB if sys.platform == "darwin" else 1024)


def median_ms(run: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of `run` in ms over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


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


def speed(model: CardioCLIP, encode_train: Callable[[], torch.Tensor],
          encode_inference: Callable[[], torch.Tensor], batch: int, unit: str,
          options: BenchOptions, bar: tqdm | None, label: str) -> dict[str, float]:
    """Median ms per batch of a training step (forward, backward of the embeddings' sum) and
    of inference (eval mode, no gradients), and `unit`s per second of each."""
    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        encode_train().sum().backward()

    def infer() -> None:
        with torch.no_grad():
            encode_inference()

    model.train()
    with measuring(bar, f"{label} train"):
        train_ms = median_ms(train_step, options.repeats, options.warmup)
    model.eval()
    with measuring(bar, f"{label} inference"):
        infer_ms = median_ms(infer, options.repeats, options.warmup)
    model.zero_grad(set_to_none=True)
    return {"train_ms": train_ms, "inference_ms": infer_ms,
            f"train_{unit}_per_s": 1000 * batch / train_ms,
            f"inference_{unit}_per_s": 1000 * batch / infer_ms,
            "train_over_inference": train_ms / infer_ms}


def parameter_count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


# ------------------------------------------------------------------------------ the model

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


def tower_inputs(model: CardioCLIP, modality: str, batch: int, inference: bool,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs of `batch` studies in the shapes the model's `preprocess` gives: one window
    per study in training; at inference the ECG's `windows`, which the model averages."""
    pre = as_preprocess(model.config.preprocess).require([modality])

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    if modality == "ecg":
        windows = pre.ecg.windows if inference and pre.ecg.windows > 1 else 0
        leads = (batch, windows, N_LEADS) if windows else (batch, N_LEADS)
        return {"signal": 0.3 * randn(*leads, pre.ecg.samples),  # about an ECG's scale in mV
                "lead_mask": torch.ones(batch, N_LEADS, dtype=torch.bool)}
    if modality == "echo":
        views = pre.echo.max_views
        return {"frames": randn(batch, views, pre.echo.frames, *pre.echo.size),
                "view_ids": torch.randint(len(ECHO_VIEWS), (batch, views), generator=generator),
                "view_mask": torch.ones(batch, views, dtype=torch.bool)}
    if modality == "cmr":
        return {"cine": randn(batch, pre.cmr.phases, pre.cmr.slices, *pre.cmr.size)}
    return {"volume": randn(batch, 1, *pre.ct.shape)}


# ------------------------------------------------------------------------------ sections

def bench_towers(model: CardioCLIP, options: BenchOptions, bar: tqdm | None = None) -> dict:
    """Each modality tower (with its projection head) on random inputs of `batch_size` studies."""
    generator = torch.Generator().manual_seed(0)
    towers = {}
    for modality in model.modalities:
        train = tower_inputs(model, modality, options.batch_size, False, generator)
        infer = tower_inputs(model, modality, options.batch_size, True, generator)
        main = model.towers[modality].input_keys[0]
        towers[modality] = {
            "parameters": parameter_count(model.towers[modality], model.heads[modality]),
            "train_input": list(train[main].shape), "inference_input": list(infer[main].shape),
            **speed(model, partial(model.encode, modality, train),
                    partial(model.encode, modality, infer), options.batch_size, "studies",
                    options, bar, modality),
        }
    return {"modalities": towers, "peak_rss_mib": peak_rss_mib()}


def phantom_reports(n: int) -> list[str]:
    """`n` phantom cohort reports, English and Chinese in turn."""
    rng = np.random.default_rng(0)
    return [write_report(truth, LANGUAGES[i % len(LANGUAGES)], rng)
            for i, truth in enumerate(cohort_truths(n, seed=0))]


def bench_text(model: CardioCLIP, options: BenchOptions, bar: tqdm | None = None) -> dict:
    """The text tower (tokenizing included) on a batch of phantom reports."""
    if model.text.needs_tokenizer:  # a scratch tower of a built-in config
        model.text.fit_tokenizer(phantom_reports(TOKENIZER_REPORTS))
    texts = phantom_reports(options.batch_size)
    tokens = model.text.tokenize(texts)["attention_mask"].sum(1).float().mean().item()
    encode = partial(model.encode_text, texts)
    return {"parameters": parameter_count(model.text, model.text_head), "texts": len(texts),
            "languages": list(LANGUAGES), "mean_tokens_per_text": tokens,
            **speed(model, encode, encode, len(texts), "texts", options, bar, "text"),
            "peak_rss_mib": peak_rss_mib()}


def file_bytes(path: Path) -> tuple[int, int]:
    """(files, bytes) of a file or of a folder's files."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return len(files), sum(p.stat().st_size for p in files)


def bench_reader(path: Path, read: Callable[[Path], Any], array: str, options: BenchOptions
                 ) -> dict:
    """ms per file and MB/s of reading `path` with `read`, and the shape of the record's `array`."""
    files, size = file_bytes(path)
    ms = median_ms(lambda: read(path), options.repeats, options.warmup)
    return {"files": files, "megabytes": size / 1e6, "ms": ms, "ms_per_file": ms / files,
            "megabytes_per_s": size / 1e6 / (ms / 1000),
            "shape": list(getattr(read(path), array).shape)}


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
    return {"files": files, "peak_rss_mib": peak_rss_mib()}


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k ids that `found` holds, over all queries."""
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def bench_index(dim: int, options: BenchOptions, bar: tqdm | None = None) -> dict:
    """Each FAISS kind as `mmcardio index` builds it, over `n_vectors` random unit vectors:
    build time, queries per second, and recall@10 against the exact (flat) hits. Uniform
    random vectors are the hardest case for approximate search; embeddings cluster."""
    rng = np.random.default_rng(0)
    vectors, queries = unit_vectors(options.n_vectors, dim, rng), unit_vectors(QUERIES, dim, rng)
    kinds, exact = {}, None
    for kind in KINDS:  # flat first: its hits are the exact ones
        with measuring(bar, f"index {kind}"):
            start = time.perf_counter()
            index = build_faiss(vectors, IndexParams(kind=kind))
            build_s = time.perf_counter() - start
            ms = median_ms(partial(index.search, queries, TOP_K), options.repeats, options.warmup)
            found = index.search(queries, TOP_K)[1]
        exact = found if exact is None else exact
        kinds[kind] = {"build_s": build_s, "queries_per_s": 1000 * QUERIES / ms,
                       f"recall_at_{TOP_K}": recall(found, exact)}
    return {"vectors": options.n_vectors, "dim": dim, "queries": QUERIES, "k": TOP_K,
            "kinds": kinds, "peak_rss_mib": peak_rss_mib()}


# ------------------------------------------------------------------------------ the document

def cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine_facts() -> dict[str, Any]:
    """What two runs must share for their numbers to compare."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": cpu_model(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "faiss": faiss.__version__,
            "numpy": np.__version__, "mmcardio": mmcardio.__version__}


def run_benchmarks(options: BenchOptions, progress: bool = False) -> dict[str, Any]:
    """Run the chosen sections (in SECTIONS order) and return the JSON-ready document."""
    config = model_config(options.model)
    sections = options.ordered_sections
    needs_model = bool({"towers", "text"} & set(sections))
    steps = sum(2 * len(config.towers) if s == "towers" else STEPS[s] for s in sections)
    with thread_count(options.threads), tqdm(total=steps, desc="bench", unit="step",
                                             disable=not progress) as bar:
        document: dict[str, Any] = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "options": {**asdict(options), "sections": sections},
            "machine": machine_facts(),
            "baseline_rss_mib": peak_rss_mib(),
            "sections": {},
        }
        model = create_model(options.model) if needs_model else None
        run = {"towers": lambda: bench_towers(model, options, bar),
               "text": lambda: bench_text(model, options, bar),
               "readers": lambda: bench_readers(options, bar),
               "index": lambda: bench_index(config.embed_dim, options, bar)}
        for section in sections:
            document["sections"][section] = run[section]()
    return document

