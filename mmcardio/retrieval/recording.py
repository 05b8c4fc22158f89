"""A long ECG (Holter, hours; a wearable's strip) embedded as a sequence of windows.

The recording is read one window at a time (`iter_ecg_windows`: WFDB and EDF decode only that
window), each window preprocessed as the model's training ECGs were (resampled, filtered, its
leads in the 12 standard rows, the rest masked) and embedded by the ECG tower. The result holds
one unit vector per window with its start time, and the recording's mean direction.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmcardio.datasets.readers.ecg import ecg_duration_s, iter_ecg_windows, window_starts
from mmcardio.datasets.transforms import crop_or_pad, prepare_ecg
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path
from mmcardio.retrieval.store import load_model, model_fingerprint


@dataclass
class RecordingEmbeddings:
    """Window embeddings of one recording: `vectors` [W, D] (unit norm), `start_s` [W]."""

    source: str
    window_s: float
    start_s: np.ndarray
    vectors: np.ndarray
    model: dict = field(default_factory=dict)
    lead_origin: dict[str, str] = field(default_factory=dict)

    def mean(self) -> np.ndarray:
        """The recording's embedding: the renormalised mean of its windows (as the model
        averages the inference windows of a 10-s ECG)."""
        total = self.vectors.mean(0)
        return total / max(float(np.linalg.norm(total)), 1e-12)

    def save(self, path: str | Path) -> Path:
        """An .npz with `vectors`, `start_s`, `mean` and a JSON `meta` (source, window, model
        fingerprint, lead origin), written atomically."""
        meta = {"source": self.source, "window_s": self.window_s, "model": self.model,
                "lead_origin": self.lead_origin}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, vectors=self.vectors, start_s=self.start_s, mean=self.mean(),
                     meta=np.array(json.dumps(meta)))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RecordingEmbeddings:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(meta["source"], meta["window_s"], data["start_s"], data["vectors"], meta["model"],
                       meta["lead_origin"])


@torch.inference_mode()
def embed_recording(model_folder: str | Path, path: str | Path, window_s: float | None = None,
                    hop_s: float | None = None, batch_size: int = 32, lead_map: dict[str, str] | None = None,
                    ecg_leads: Sequence[str] | None = None, fs: float | None = None,
                    progress: bool = False) -> RecordingEmbeddings:
    """Embed `path` window by window with the CardioCLIP in `model_folder`.

    window_s: window length (default: the model's ECG input, `samples / fs` of its config);
    hop_s: step between starts (default: back to back; the last window ends at the end).
    lead_map, fs: as `read_ecg`'s; ecg_leads: give the tower only these leads."""
    from tqdm import tqdm

    from mmcardio.processor import CardioProcessor

    model = load_model(model_folder)
    if "ecg" not in model.towers:
        raise MMCardioError(f"the model has no ECG tower (it has {model.modalities})", model_folder)
    cfg = CardioProcessor.from_model(model, ecg_leads).preprocess.ecg
    window_s = window_s or cfg.samples / cfg.fs
    starts = window_starts(ecg_duration_s(path, fs=fs), window_s, hop_s)
    vectors, origin = [], {}
    bar = tqdm(total=len(starts), desc="embed windows", unit="window", disable=not progress)
    for batch in _batches(iter_ecg_windows(path, window_s, hop_s, fs=fs, lead_map=lead_map), batch_size):
        prepared = [prepare_ecg(ecg, cfg) for ecg in batch]
        signal = torch.stack([crop_or_pad(p["signal"], cfg.samples) for p in prepared])
        lead_mask = torch.stack([p["lead_mask"] for p in prepared])
        vectors.append(model.encode("ecg", {"signal": signal, "lead_mask": lead_mask}).float().cpu().numpy())
        origin = batch[0].lead_origin
        bar.update(len(batch))
    bar.close()
    return RecordingEmbeddings(str(path), float(window_s), np.asarray(starts, dtype=np.float64),
                               np.concatenate(vectors), model_fingerprint(model_folder, ecg_leads), origin)


def _batches(windows: Iterator, size: int) -> Iterator[list]:
    batch = []
    for window in windows:
        batch.append(window)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
