"""A segmenter folder for inference: one base SAM and its LoRA adapters, one per modality.

A training run's `final/` folder is `config.json` + `model.safetensors` (the base), an
`adapters/<modality>/` folder per adapter, and `segmenter.json`, which says what each part
was trained to outline: {"base": {"modality": "echo", "structures": ["lv_cavity"]} or null
(e.g. a SAM checkpoint nobody fine-tuned), "adapters": {"cmr": ["lv_cavity", "lv_epicardium"]}}.
A LoRA run started from another run's folder carries that folder's adapters on, so adapting
one base to echo, then CMR, then CT ends in one folder that segments all three.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mmcardio.adapters.lora import load_lora
from mmcardio.adapters.sam import CardiacPredictor, load_segmenter
from mmcardio.config import from_dict, read_mapping, to_dict
from mmcardio.errors import ConfigError
from mmcardio.io import write_json

CARD_FILE = "segmenter.json"
ADAPTERS_DIR = "adapters"


@dataclass
class BasePart:
    modality: str
    structures: list[str]


@dataclass
class SegmenterCard:
    """What a segmenter folder's base and adapters were trained to outline."""

    base: BasePart | None = None
    adapters: dict[str, list[str]] = field(default_factory=dict)

    def modalities(self) -> dict[str, list[str]]:
        """modality -> structures; an adapter wins over a base of the same modality."""
        found = {self.base.modality: self.base.structures} if self.base else {}
        return found | self.adapters


def read_card(folder: str | Path) -> SegmenterCard:
    """The folder's `segmenter.json`; an empty card (nothing known) when there is none."""
    path = Path(folder) / CARD_FILE
    return from_dict(SegmenterCard, read_mapping(path), str(path)) if path.is_file() else SegmenterCard()


def write_card(folder: str | Path, card: SegmenterCard) -> Path:
    return write_json(Path(folder) / CARD_FILE, to_dict(card))


def carry_adapters(source: str | Path, folder: str | Path, skip: str) -> dict[str, list[str]]:
    """Copy `source`'s adapter folders (all but `skip`, which a run is replacing) into
    `folder`; returns their modalities and structures from `source`'s card."""
    card = read_card(source)
    carried = {}
    for modality, structures in card.adapters.items():
        if modality != skip and (Path(source) / ADAPTERS_DIR / modality).is_dir():
            shutil.copytree(Path(source) / ADAPTERS_DIR / modality, Path(folder) / ADAPTERS_DIR / modality)
            carried[modality] = structures
    return carried


class Segmenters:
    """A segmenter folder loaded for inference: `predictor(modality)` returns a predictor
    whose model outlines that modality's structures (`structures(modality)`).

    The base is loaded twice when there are adapters: once plain for its own modality, once
    under peft (which wraps modules in place) for the adapters; switching adapters is peft's
    `set_adapter`, and a predictor's cached embeddings are keyed by the active adapter."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        self.folder = Path(folder)
        if not (self.folder / CARD_FILE).is_file():
            raise ConfigError(f"no {CARD_FILE}: expected a segmenter folder (a `mmcardio segment train` "
                              f"run's final/) saying what it outlines", self.folder)
        self.card = read_card(self.folder)
        if not self.card.modalities():
            raise ConfigError(f"{CARD_FILE} names no modality the segmenter was trained on", self.folder)
        self.predictors: dict[str, CardiacPredictor] = {}
        if self.card.base is not None and self.card.base.modality not in self.card.adapters:
            base, _ = load_segmenter(self.folder, device)
            self.predictors[self.card.base.modality] = CardiacPredictor(
                base.eval(), self.card.base.modality, outputs=len(self.card.base.structures))
        adapted = None
        for modality in self.card.adapters:
            adapted = load_lora(adapted or load_segmenter(self.folder, device)[0], self._adapter(modality),
                                modality)
            self.predictors[modality] = CardiacPredictor(adapted.eval(), modality,
                                                         outputs=len(self.card.adapters[modality]))

    def structures(self, modality: str) -> list[str]:
        return self.card.modalities().get(str(modality), [])

    def predictor(self, modality: str) -> CardiacPredictor:
        """The predictor of `modality`, its adapter made the active one."""
        modality = str(modality)
        if modality not in self.predictors:
            raise ConfigError(f"this segmenter outlines {sorted(self.predictors)}, not {modality!r}",
                              self.folder, "modality")
        predictor = self.predictors[modality]
        if modality in self.card.adapters:
            predictor.model.set_adapter(modality)
        return predictor

    def _adapter(self, modality: str) -> Path:
        folder = self.folder / ADAPTERS_DIR / modality
        if not folder.is_dir():
            raise ConfigError(f"{CARD_FILE} lists adapter {modality!r}, but {folder} is missing", self.folder)
        return folder
