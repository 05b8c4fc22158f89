"""CardioCLIP's config: the towers, the loss, the fusion and the preprocessing stored with a
model, checked when built (`build_config`) so a saved config.json stands on its own."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mmcardio.config import from_dict, to_dict
from mmcardio.encoders.registry import encoder_config
from mmcardio.errors import ConfigError
from mmcardio.losses import LOSSES
from mmcardio.modality import STUDY_MODALITIES

FUSIONS = ("mean", "attention")
MODEL_TYPE = "cardioclip"
#: What a saved model folder holds (`CardioCLIP.save_pretrained`).
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"


@dataclass
class CardioCLIPConfig:
    """A CardioCLIP. `towers` maps modality -> encoder config (a dict, or a registry name /
    JSON path that `build_config` replaces by its dict); `text` likewise for the text tower.

    preprocess: the data pipeline's preprocessing config, stored verbatim so inference
    prepares inputs exactly as training did. fusion: how `encode_study` merges modalities,
    "mean" (of present embeddings, re-normalised) or "attention" (learned weights, trained by
    aligning the fused study embedding with the text as one more term of the loss).
    report_views: one more loss term aligns two random sentence subsets of each training
    report with each other (the data pipeline draws the second as "text_view"): the text
    tower must then place a sentence near the reports that contain it, including findings
    the study towers do not show yet, which gives them a text direction to learn towards.
    cross_modal_pairs: modality pairs also aligned with each other on the studies that have
    both: ECG with echo serves cross-modal search (but asks the ECG tower for what only an
    echo shows; cardioclip-tiny leaves it out, see the README); echo with CMR, which image
    the same ventricle, lets the CMR tower (fewer studies) learn size and function from the
    echo tower as well as from its report.
    """

    embed_dim: int = 512
    towers: dict[str, Any] = field(default_factory=dict)
    text: Any = field(default_factory=dict)
    loss: str = "clip"
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float = -10.0
    cross_modal_pairs: list[list[str]] = field(default_factory=list)
    preprocess: dict = field(default_factory=dict)
    fusion: str = "mean"
    report_views: bool = False
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        known = [str(m) for m in STUDY_MODALITIES]
        checks = [
            (
                "model_type",
                self.model_type == MODEL_TYPE,
                f"expected {MODEL_TYPE!r}, got {self.model_type!r}",
            ),
            ("loss", self.loss in LOSSES, f"expected one of {LOSSES}, got {self.loss!r}"),
            ("fusion", self.fusion in FUSIONS, f"expected one of {FUSIONS}, got {self.fusion!r}"),
            (
                "towers",
                bool(self.towers) and set(self.towers) <= set(known),
                f"expected a mapping from some of {known} to encoder configs, got {sorted(self.towers)}",
            ),
            ("embed_dim", self.embed_dim > 0, f"expected a positive size, got {self.embed_dim}"),
        ]
        for pair in self.cross_modal_pairs:
            checks.append(
                (
                    "cross_modal_pairs",
                    len(pair) == 2 and pair[0] != pair[1] and set(pair) <= set(self.towers),
                    f"each pair names two different towers of {sorted(self.towers)}, got {pair}",
                )
            )
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(problem, field=name)


def build_config(data: dict, source: str = "<dict>") -> CardioCLIPConfig:
    """A validated config with every tower given as its full dict (names and paths resolved,
    defaults filled in), so a saved config.json stands on its own."""
    try:
        config = from_dict(CardioCLIPConfig, data, source)
    except ConfigError as err:
        raise ConfigError(err.problem, source, err.field) from None
    towers = {
        m: to_dict(encoder_config(m, spec, source, f"towers.{m}."))
        for m, spec in config.towers.items()
    }
    text = to_dict(encoder_config("text", config.text, source, "text."))
    config = dataclasses.replace(config, towers=towers, text=text)
    _check_preprocess(config, source)
    return config


def _check_preprocess(config: CardioCLIPConfig, source: str) -> None:
    """Refuse preprocessing sizes the towers cannot take (checked for the keys present)."""
    pre, towers = config.preprocess, config.towers

    def get(mod: str, key: str) -> Any:
        return (pre.get(mod) or {}).get(key) if mod in towers else None

    rules = [  # (preprocess key, tower key, ok(pre value, tower value))
        ("ecg", "fs", "input_fs", lambda p, t: float(p) == float(t)),
        ("ecg", "samples", "input_samples", lambda p, t: p <= t),
        ("echo", "frames", "input_frames", lambda p, t: p <= t),
        ("echo", "size", "input_size", lambda p, t: list(p) == list(t)),
        ("cmr", "phases", "input_phases", lambda p, t: p <= t),
        ("cmr", "slices", "input_slices", lambda p, t: p <= t),
        ("cmr", "size", "input_size", lambda p, t: list(p) == list(t)),
        ("ct", "shape", "input_size", lambda p, t: list(p) == list(t)),
    ]
    for mod, pre_key, tower_key, ok in rules:
        value = get(mod, pre_key)
        if value is not None and not ok(value, towers[mod][tower_key]):
            raise ConfigError(
                f"preprocessing gives {value} but the {mod} tower takes "
                f"towers.{mod}.{tower_key} = {towers[mod][tower_key]}",
                source,
                f"preprocess.{mod}.{pre_key}",
            )
