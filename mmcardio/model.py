"""CardioCLIP: modality towers + projection heads into one space anchored on report text.

Towers live in an `nn.ModuleDict` keyed by modality (ImageBind style); each has a linear
projection to `embed_dim` and outputs L2-normalised embeddings. A learnable temperature
(`logit_scale`, exp'd and clamped at 100 as in CLIP) and, for the SigLIP loss, a learnable
bias come with the model. Models save as folders (config.json + model.safetensors +
tokenizer/) that load without the original text model.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from mmcardio.config import from_dict, read_mapping, to_dict
from mmcardio.encoders.registry import config_path, create_encoder, encoder_config, get_config
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.io import atomic_path, write_json
from mmcardio.losses import LOSSES, REPORT_VIEW, STUDY
from mmcardio.modality import STUDY_MODALITIES
from mmcardio.study import Study

FUSIONS = ("mean", "attention")
MODEL_TYPE = "cardioclip"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"
TEXT_LENGTH_BUCKETS = 4


#: Parameters that only one loss has: the sigmoid ("siglip") loss's learned bias. A run may
#: start from weights trained under the other loss.
LOSS_ONLY_PARAMETERS = frozenset({"logit_bias"})
#: State that weights saved before it existed lack; it then keeps its default (a zero
#: `query_center`: search queries are not centred).
OPTIONAL_STATE = frozenset({"query_center"})


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
                f"expected a mapping from some of {known} to encoder configs, "
                f"got {sorted(self.towers)}",
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


class StudyFusion(nn.Module):
    """Learned attention over a study's modality embeddings (absent modalities get weight 0)."""

    def __init__(self, dim: int, n_modalities: int):
        super().__init__()
        self.modality_embed = nn.Parameter(torch.zeros(n_modalities, dim))
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, stacked: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        scores = self.score(stacked + self.modality_embed).squeeze(-1)
        weights = scores.masked_fill(~present, float("-inf")).softmax(1)
        return (weights[..., None] * stacked).sum(1)


class CardioCLIP(nn.Module):
    """Study modalities and report text in one contrastive embedding space.

    `forward(batch)` takes the data pipeline's collated batch and returns what
    `CardioCLIPLoss` takes: features {modality: [n, D]}, rows {modality: [n]}, text [B, D]
    (or None), modality_text {modality: [n, D]}, logit_scale, logit_bias. `text_folder` builds
    the text tower from a saved folder's tokenizer/ (architecture only; the weights come from
    model.safetensors).
    """

    def __init__(self, config: CardioCLIPConfig, text_folder: str | Path | None = None):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.towers = nn.ModuleDict(
            {
                m: create_encoder(m, encoder_config(m, spec, prefix=f"towers.{m}."))
                for m, spec in config.towers.items()
            }
        )
        self.heads = nn.ModuleDict(
            {m: nn.Linear(t.width, dim, bias=False) for m, t in self.towers.items()}
        )
        self.text = create_encoder(
            "text", encoder_config("text", config.text, prefix="text."), folder=text_folder
        )
        self.text_head = nn.Linear(self.text.width, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (  # the sigmoid loss's bias (see LOSS_ONLY_PARAMETERS)
            nn.Parameter(torch.tensor(float(config.init_logit_bias)))
            if config.loss == "siglip"
            else None
        )
        self.fusion = StudyFusion(dim, len(self.towers)) if config.fusion == "attention" else None
        # The mean embedding of the training reports' sentences, set by `fit_query_center`
        # when alignment ends; `encode_query` subtracts it.
        self.register_buffer("query_center", torch.zeros(dim))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def modalities(self) -> list[str]:
        return list(self.towers)

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token tensors for `texts` on the model's device (data workers need no tokenizer)."""
        return {k: v.to(self.device) for k, v in self.text.tokenize(texts).items()}

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings [B, D], in input order.

        The texts go through the tower in TEXT_LENGTH_BUCKETS passes of similar length
        (sorted by characters): a batch mixes one-line exam reports with whole reports ten
        times longer, and one pass would pad every text to the longest (measured on a
        training batch of the phantom cohort: 40% less text time, same embeddings)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = max(math.ceil(len(texts) / TEXT_LENGTH_BUCKETS), 1)
        parts = [self.text(**self.tokenize([texts[i] for i in order[start:start + size]]))
                 for start in range(0, len(texts), size)]
        pooled = torch.cat(parts)[torch.argsort(torch.tensor(order, device=self.device))]
        return F.normalize(self.text_head(pooled), dim=-1)

    def encode_query(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings [B, D] of search queries ("atrial fibrillation"): `encode_text`
        minus `query_center`, re-normalised.

        One-line texts share a direction that names no finding, and ranking studies by it
        puts those near every sentence first; subtracting the mean sentence of the training
        reports (distribution normalisation, Zhou et al. 2023) ranks them by what the query
        says. Whole reports are not queries of this kind: matching a report to its study uses
        `encode_text` (centred by the sentence mean, exact-study R@10 fell from 0.62 to 0.56
        on the demo)."""
        return F.normalize(self.encode_text(texts) - self.query_center, dim=-1)

    @torch.no_grad()
    def fit_query_center(self, sentences: list[str], batch_size: int = 256) -> torch.Tensor:
        """Set `query_center` to the mean `encode_text` embedding of `sentences` (in eval
        mode, e.g. the training reports' sentences) and return it."""
        if not sentences:
            raise MMCardioError("no sentences to centre search queries on", field="sentences")
        was_training = self.training
        self.eval()
        total = sum(self.encode_text(sentences[i:i + batch_size]).sum(0)
                    for i in range(0, len(sentences), batch_size))
        self.query_center.copy_(total / len(sentences))
        self.train(was_training)
        return self.query_center

    def encode(self, modality: str, inputs: dict | torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [n, D] of one modality: the batch's dict for it (its `rows`
        are ignored) or just the main tensor (ECG signal, echo frames, CMR cine, CT volume). A main
        tensor with a window axis after the batch axis (ECG [n, W, 12, S], see
        `ECGPreprocess.windows`) gives each study the renormalised mean of its windows."""
        return self._embed(modality, inputs)[0]

    def _embed(
        self, modality: str, inputs: dict | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if modality not in self.towers:
            raise ValueError(f"this model has no {modality!r} tower; it has {self.modalities}")
        tower = self.towers[modality]
        if isinstance(inputs, torch.Tensor):
            inputs = {tower.input_keys[0]: inputs}
        if tower.input_keys[0] not in inputs:
            raise ValueError(
                f"{modality} inputs need {tower.input_keys[0]!r}, got keys {sorted(inputs)}"
            )
        main = tower.input_keys[0]
        inputs = {k: inputs[k].to(self.device) for k in tower.input_keys if k in inputs}
        # main input [n, W, ...]: W inference windows of each recording (`sample_ecg`),
        # embedded one by one and averaged
        windows = inputs[main].shape[1] if inputs[main].ndim > tower.input_ndim else 0
        if windows:
            inputs = {k: v.flatten(0, 1) if k == main else v.repeat_interleave(windows, 0)
                      for k, v in inputs.items()}
        out = tower(**inputs)
        emb, extra = out if isinstance(out, tuple) else (out, None)
        emb = F.normalize(self.heads[modality](emb), dim=-1)
        if windows:
            emb = F.normalize(emb.unflatten(0, (-1, windows)).mean(1), dim=-1)
            extra = None if extra is None else extra.unflatten(0, (-1, windows)).mean(1)
        return emb, extra

    def fuse(
        self, features: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm study embeddings [k, D] of the k studies with any modality, and their rows."""
        like = next(iter(features.values()))
        stacked = like.new_zeros(batch_size, len(self.towers), self.config.embed_dim)
        present = torch.zeros(batch_size, len(self.towers), dtype=torch.bool, device=like.device)
        for i, m in enumerate(self.towers):
            if m in features:
                stacked[rows[m], i] = features[m]
                present[rows[m], i] = True
        if self.fusion is not None:
            fused = self.fusion(stacked, present)
        else:
            fused = stacked.sum(1) / present.sum(1, keepdim=True).clamp_min(1)
        has_any = present.any(1)
        return F.normalize(fused[has_any], dim=-1), has_any.nonzero().flatten()

    def forward(self, batch: dict) -> dict:
        """Embeddings of every modality present in `batch` (keys without a tower are ignored),
        of each modality's exam reports ("modality_text", rows as in "rows"; from
        `batch[m]["report"]`, which the data pipeline fills) and, when some term needs them, of
        the whole reports ("text" [B, D], else None)."""
        features, rows = {}, {}
        for m in self.towers:
            if m in batch:
                features[m] = self.encode(m, batch[m])
                rows[m] = batch[m]["rows"].to(self.device)
        if self.fusion is not None and features:
            features[STUDY], rows[STUDY] = self.fuse(features, rows, len(batch["text"]))
        text, modality_text = self._encode_reports(batch)
        if REPORT_VIEW in modality_text:  # the views are aligned like a modality, not as its text
            features[REPORT_VIEW] = modality_text.pop(REPORT_VIEW)
            rows[REPORT_VIEW] = torch.arange(len(batch["text"]), device=self.device)
        return {
            "features": features,
            "rows": rows,
            "text": text,
            "modality_text": modality_text,
            "logit_scale": self.logit_scale.exp().clamp(max=100.0),
            "logit_bias": self.logit_bias,
        }

    def _encode_reports(self, batch: dict) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Exam reports and, when a loss term needs them (the fused study, or a modality without
        exam reports in the batch), whole reports: one text-tower pass over distinct strings."""
        exams = {m: list(batch[m]["report"]) for m in self.towers
                 if m in batch and "report" in batch[m]}
        if self.config.report_views and "text_view" in batch:
            exams[REPORT_VIEW] = list(batch["text_view"])  # aligned with the whole reports
        need_whole = self.fusion is not None or REPORT_VIEW in exams \
            or any(m in batch and m not in exams for m in self.towers)
        whole = list(batch["text"]) if need_whole else []
        distinct = list(dict.fromkeys([*whole, *(t for v in exams.values() for t in v)]))
        if not distinct:
            return None, {}
        index = {t: i for i, t in enumerate(distinct)}
        embedded = self.encode_text(distinct)

        def rows_of(texts: list[str]) -> torch.Tensor:
            return embedded[torch.tensor([index[t] for t in texts], device=self.device)]

        return (rows_of(whole) if whole else None), {m: rows_of(v) for m, v in exams.items()}

    @torch.no_grad()
    def encode_study(self, study_inputs: dict[str, dict] | Study) -> dict[str, torch.Tensor]:
        """Embeddings [D] of one study: one per modality, the fused "study", and the echo
        "echo_view_weights" [V]. Takes preprocessed tensors per modality (unbatched, or with a
        batch of 1), or a `Study`, preprocessed with this model's stored `preprocess` config.
        Call `model.eval()` first."""
        if isinstance(study_inputs, Study):
            from mmcardio.datasets.cohort import (
                preprocess_study,  # the data pipeline imports this module
            )

            study_inputs = preprocess_study(study_inputs, self.config.preprocess)
        out: dict[str, torch.Tensor] = {}
        features, rows = {}, {}
        for m, tower in self.towers.items():
            if m not in study_inputs:
                continue
            emb, extra = self._embed(m, _as_batch_of_one(tower, study_inputs[m]))
            features[m], rows[m], out[m] = (
                emb,
                torch.zeros(1, dtype=torch.long, device=self.device),
                emb[0],
            )
            if extra is not None:
                out[f"{m}_view_weights"] = extra[0]
        if not features:
            raise ValueError(
                f"the study has none of this model's modalities {self.modalities}; "
                f"got {sorted(study_inputs)}"
            )
        out[STUDY] = self.fuse(features, rows, 1)[0][0]
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json, model.safetensors (all weights, text tower included) and
        tokenizer/ (tokenizer files + the text model's config) atomically into `folder`."""
        folder = Path(folder)
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            write_json(tmp / CONFIG_FILE, to_dict(self.config))
            save_model(self, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            self.text.save_tokenizer(tmp / TOKENIZER_DIR)
        return folder

    def empty_like(self) -> CardioCLIP:
        """A fresh model of the same architecture, text tokenizer and vocabulary included
        (a scratch tower's learned WordPiece and words added by `extend_vocabulary`), to load
        this model's gathered state dict into. `CardioCLIP(self.config)` would lack both."""
        with tempfile.TemporaryDirectory() as tmp:
            self.text.save_tokenizer(Path(tmp))
            return type(self)(self.config, text_folder=tmp)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> CardioCLIP:
        """Load a folder written by `save_pretrained` (nothing is downloaded)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MMCardioError(
                "not a folder; expected a CardioCLIP folder written by save_pretrained", folder
            )
        missing = [
            n for n in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR) if not (folder / n).exists()
        ]
        if missing:
            raise MMCardioError(
                f"missing {missing}; a CardioCLIP folder holds {CONFIG_FILE}, "
                f"{WEIGHTS_FILE} and {TOKENIZER_DIR}/",
                folder,
            )
        config = build_config(read_mapping(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
        model = cls(config, text_folder=folder / TOKENIZER_DIR)
        weights = folder / WEIGHTS_FILE
        try:
            absent, unexpected = load_model(model, str(weights), strict=False, device=str(device))
        except (RuntimeError, OSError) as err:  # shape mismatches, unreadable file
            raise MMCardioError(f"weights do not fit {CONFIG_FILE}: {err}", weights) from None
        absent, unexpected = sorted(set(absent) - OPTIONAL_STATE), sorted(unexpected)
        if absent or unexpected:
            raise MMCardioError(
                f"weights do not fit {CONFIG_FILE}: missing {few_names(absent)}, "
                f"unexpected {few_names(unexpected)}",
                weights,
            )
        return model.to(device)


def few_names(names: list[str], k: int = 5) -> str:
    """The first `k` names and how many more, for error messages."""
    return f"{names[:k]}" + (f" and {len(names) - k} more" if len(names) > k else "")


def _as_batch_of_one(tower: nn.Module, inputs: dict | torch.Tensor) -> dict:
    """One study's inputs (tensors or arrays, with or without a batch axis) as a batch of one."""
    if not isinstance(inputs, dict):
        inputs = {tower.input_keys[0]: inputs}
    inputs = {k: torch.as_tensor(v) for k, v in inputs.items() if k in tower.input_keys}
    main = inputs[tower.input_keys[0]]
    # one study: [...] alone, or its inference windows [W, ...] (W > 1 is no batch of one)
    unbatched = main.ndim == tower.input_ndim - 1 or (main.ndim == tower.input_ndim and len(main) > 1)
    return {k: v.unsqueeze(0) for k, v in inputs.items()} if unbatched else inputs


def create_model(name_or_path: str | Path, **overrides: Any) -> CardioCLIP:
    """A CardioCLIP from a built-in config name ("cardioclip-tiny"), a JSON path, or a saved
    folder (then loaded with its weights). `overrides` replace top-level config keys."""
    path = Path(name_or_path)
    if path.is_dir():
        if overrides:
            raise ConfigError(
                f"overrides {sorted(overrides)} apply to configs, not to saved models", path
            )
        return CardioCLIP.from_pretrained(path)
    data = get_config(name_or_path)
    data.update(overrides)
    return CardioCLIP(build_config(data, str(config_path(name_or_path))))
