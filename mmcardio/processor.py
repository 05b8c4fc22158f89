"""CardioProcessor: what stands between a study's files (or a report) and a model's inputs.

Like a Hugging Face processor (image processor + tokenizer) or SAM's predictor, one object owns
the readers, the model's `preprocess` config, the modalities its towers take and the text
tokenizer, so training, embedding and evaluation prepare inputs the same way:

    processor = CardioProcessor.from_pretrained("runs/tiny/final")  # no weights read
    inputs = processor(study)                      # one study's model inputs, centre windows
    tokens = processor.tokenize(["LVEF 35 %"])
    dataset = StudyDataset(studies, processor)     # mmcardio.datasets.cohort

A study goes through two stages: `prepare` reads its files and runs the deterministic
transforms (the flat tensor dict that `prepare_cache` stores), `sample` cuts the windows the
model takes (centred, or random with the training augmentations when given a generator).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcardio.config import read_mapping
from mmcardio.datasets.preprocess_config import PreprocessConfig, as_preprocess
from mmcardio.datasets.readers import read_ecg, read_video, read_volume
from mmcardio.datasets.transforms import (
    choose_views,
    prepare_cmr,
    prepare_ct,
    prepare_ecg,
    prepare_echo,
    sample_cmr,
    sample_ct,
    sample_ecg,
    sample_echo,
    view_id,
)
from mmcardio.encoders.registry import create_encoder, encoder_config
from mmcardio.encoders.text import TextEncoder
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.modality import STUDY_MODALITIES
from mmcardio.model_config import CONFIG_FILE, TOKENIZER_DIR, build_config
from mmcardio.study import Study

#: Modality keys in the order batches, samplers and caches list them.
MODALITY_NAMES = tuple(str(m) for m in STUDY_MODALITIES)


def wanted_modalities(study: Study, modalities: Iterable[str] | None = None) -> list[str]:
    """The study's modalities, restricted to `modalities` when given."""
    allowed = None if modalities is None else set(map(str, modalities))
    return [str(m) for m in study.modalities() if allowed is None or str(m) in allowed]


class CardioProcessor:
    """Studies -> model inputs, texts -> tokens, for one model.

    preprocess: a `PreprocessConfig` or its dict (a model's `config.preprocess`).
    modalities: those read (default: those `preprocess` gives model sizes for); every one must
        have its sizes set. A study's other modalities are left out.
    text: the model's text tower, whose `tokenize` the processor uses (None: no tokenizer).
    """

    def __init__(self, preprocess: PreprocessConfig | dict, modalities: Iterable[str] | None = None,
                 text: TextEncoder | None = None):
        self.preprocess = as_preprocess(preprocess)
        self.modalities = (self.preprocess.sized_modalities() if modalities is None
                           else list(map(str, modalities)))
        unknown = sorted(set(self.modalities) - set(MODALITY_NAMES))
        if unknown:
            raise ConfigError(f"expected modalities among {list(MODALITY_NAMES)}, got {unknown}",
                              field="modalities")
        self.preprocess.require(self.modalities)
        self.text = text

    @classmethod
    def from_model(cls, model: Any, ecg_leads: Sequence[str] | None = None) -> CardioProcessor:
        """The processor of a `CardioCLIP`: its stored preprocessing, its towers' modalities
        and its text tower's tokenizer (shared, so a vocabulary the model learns is used).
        ecg_leads: give the ECG tower only these leads (`ECGPreprocess.leads`)."""
        preprocess = as_preprocess(model.config.preprocess)
        if ecg_leads is not None:
            preprocess = replace(preprocess, ecg=replace(preprocess.ecg, leads=list(ecg_leads)))
        return cls(preprocess, model.modalities, model.text)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> CardioProcessor:
        """The processor of a folder written by `CardioCLIP.save_pretrained`, from its
        config.json (preprocess and towers) and tokenizer/; the weights are not read."""
        folder = Path(folder)
        missing = [n for n in (CONFIG_FILE, TOKENIZER_DIR) if not (folder / n).exists()]
        if missing:
            raise MMCardioError(f"missing {missing}; expected a CardioCLIP folder written by "
                                "save_pretrained", folder)
        config = build_config(read_mapping(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
        with torch.device("meta"):  # the tower's tokenizer and settings, no memory for weights
            text = create_encoder("text", encoder_config("text", config.text, prefix="text."),
                                  folder=folder / TOKENIZER_DIR)
        return cls(config.preprocess, list(config.towers), text)

    def __getstate__(self) -> dict:
        """Pickled copies (DataLoader workers, `copy.deepcopy`) leave out the text tower:
        workers never tokenize, and a tower (perhaps on a GPU) must not be copied into each."""
        return {**self.__dict__, "text": None}

    # ------------------------------------------------------------------ studies
    def prepare(self, study: Study, modalities: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Read the study's files and run the deterministic transforms.

        Returns a flat dict (what the cache stores): "ecg.signal" [12, L], "ecg.lead_mask" [12],
        "echo.clip{i}" [N_i, H, W] with "echo.view_ids" [V], "cmr.cine" [T, Z, H, W],
        "ct.volume" [1, D, H, W]; only for the modalities the study has among `modalities`
        (default: the processor's).
        """
        return self.prepare_records(self.read_records(study, modalities))

    def read_records(self, study: Study, modalities: Iterable[str] | None = None) -> dict:
        """The study's records as read: {"ecg": ECG, "echo": [(view, Video)] of the views the
        model takes, "cmr": Volume, "ct": Volume}, for the modalities it has among `modalities`."""
        have = wanted_modalities(study, self.modalities if modalities is None else modalities)
        records: dict = {}
        if "ecg" in have:
            records["ecg"] = read_ecg(study.ecg, lead_map=study.ecg_lead_map)
        if "echo" in have:
            views = [clip.view for clip in study.echo]
            records["echo"] = [(views[i], read_video(study.echo[i].path))
                               for i in choose_views(views, self.preprocess.echo.max_views)]
        if "cmr" in have:
            records["cmr"] = read_volume(study.cmr, modality="cmr")
        if "ct" in have:
            records["ct"] = read_volume(study.ct, modality="ct")
        return records

    def prepare_records(self, records: dict) -> dict[str, torch.Tensor]:
        """`prepare` of records already read (as `read_records` gives them): a reader's output,
        or a record changed on purpose (a test of what the model does with a flat-line ECG)."""
        cfg = self.preprocess
        out: dict[str, torch.Tensor] = {}
        if "ecg" in records:
            out.update({f"ecg.{k}": v for k, v in prepare_ecg(records["ecg"], cfg.ecg).items()})
        if "echo" in records:
            for i, (_, video) in enumerate(records["echo"]):
                out[f"echo.clip{i}"] = prepare_echo(video, cfg.echo)
            out["echo.view_ids"] = torch.tensor([view_id(view) for view, _ in records["echo"]], dtype=torch.long)
        if "cmr" in records:
            out["cmr.cine"] = prepare_cmr(records["cmr"], cfg.cmr)
        if "ct" in records:
            out["ct.volume"] = prepare_ct(records["ct"], cfg.ct)
        return out

    def sample(self, prepared: dict[str, torch.Tensor],
               rng: np.random.Generator | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Model inputs per modality from a prepared study: centre windows, or with `rng` random
        windows and the training augmentations (shifts, CMR phase roll)."""
        cfg = self.preprocess
        out: dict[str, dict[str, torch.Tensor]] = {}
        if "ecg.signal" in prepared:
            out["ecg"] = sample_ecg({"signal": prepared["ecg.signal"], "lead_mask": prepared["ecg.lead_mask"]},
                                    cfg.ecg, rng)
        if "echo.view_ids" in prepared:
            view_ids = prepared["echo.view_ids"]
            clips = [prepared[f"echo.clip{i}"] for i in range(len(view_ids))]
            out["echo"] = sample_echo(clips, view_ids, cfg.echo, rng)
        if "cmr.cine" in prepared:
            out["cmr"] = {"cine": sample_cmr(prepared["cmr.cine"], cfg.cmr, rng)}
        if "ct.volume" in prepared:
            out["ct"] = {"volume": sample_ct(prepared["ct.volume"], cfg.ct, rng)}
        return out

    def __call__(self, study: Study, rng: np.random.Generator | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """One study's model inputs per modality (unbatched), e.g. ecg: {signal [12, S] (or the
        inference windows [W, 12, S]), lead_mask [12]}; echo: {frames [V, T, H, W], view_ids
        [V], view_mask [V]}; cmr: {cine}; ct: {volume}."""
        return self.sample(self.prepare(study), rng)

    # --------------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token tensors (on CPU) as the model's text tower reads them."""
        if self.text is None:
            raise MMCardioError("this processor has no tokenizer; make it with "
                                "CardioProcessor.from_model or from_pretrained")
        return self.text.tokenize(texts)
