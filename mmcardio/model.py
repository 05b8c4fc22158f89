"""CardioCLIP: modality towers + projection heads into one space anchored on report text.

Towers live in an `nn.ModuleDict` keyed by modality (ImageBind style); each has a linear
projection to `embed_dim` and outputs L2-normalised embeddings. A learnable temperature
(`logit_scale`, exp'd and clamped at 100 as in CLIP) and, for the SigLIP loss, a learnable
bias come with the model. Models save as folders (config.json + model.safetensors +
tokenizer/) that load without the original text model.

Under mixed precision the towers and heads run in the autocast dtype, but embeddings are
normalised (and fused) in fp32, as CUDA autocast does for norms and softmax and CPU autocast
does not: bf16 unit vectors have norms off by up to 0.5% (0.15% on average in 64 dimensions),
up to half a logit at the logit scale's clamp of 100.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

from mmcardio.config import read_mapping, to_dict
from mmcardio.encoders.registry import config_path, create_encoder, encoder_config, get_config
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.io import atomic_path, write_json
from mmcardio.losses import REPORT_VIEW, STUDY, full_precision
from mmcardio.model_config import (
    CONFIG_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    CardioCLIPConfig,
    build_config,
)
from mmcardio.processor import CardioProcessor
from mmcardio.study import Study
from mmcardio.weights import check_weights_fit, load_weights

TEXT_LENGTH_BUCKETS = 4


#: Parameters that only one loss has: the sigmoid ("siglip") loss's learned bias. A run may
#: start from weights trained under the other loss.
LOSS_ONLY_PARAMETERS = frozenset({"logit_bias"})
#: State that weights saved before it existed lack; it then keeps its default (a zero
#: `query_center`: search queries are not centred).
OPTIONAL_STATE = frozenset({"query_center"})


class StudyFusion(nn.Module):
    """Learned attention over a study's modality embeddings (absent modalities get weight 0)."""

    def __init__(self, dim: int, n_modalities: int):
        super().__init__()
        self.modality_embed = nn.Parameter(torch.zeros(n_modalities, dim))
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, stacked: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        scores = full_precision(self.score(stacked + self.modality_embed).squeeze(-1))
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
        return unit_norm(self.text_head(pooled))

    def encode_query(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings [B, D] of search queries ("atrial fibrillation"): `encode_text`
        minus `query_center`, re-normalised.

        One-line texts share a direction that names no finding, and ranking studies by it
        puts those near every sentence first; subtracting the mean sentence of the training
        reports (distribution normalisation, Zhou et al. 2023) ranks them by what the query
        says. Whole reports are not queries of this kind: matching a report to its study uses
        `encode_text` (centred by the sentence mean, exact-study R@10 fell from 0.62 to 0.56
        on the demo)."""
        return unit_norm(self.encode_text(texts) - self.query_center)

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
        emb = unit_norm(self.heads[modality](emb))
        if windows:
            emb = unit_norm(emb.unflatten(0, (-1, windows)).mean(1))
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
        return unit_norm(fused[has_any]), has_any.nonzero().flatten()

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

    def encode_studies(
        self, inputs: dict[str, dict], batch_size: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Embeddings of a batch of `batch_size` studies from `inputs` {modality: {tensors,
        "rows"}} (a collated batch; keys without a tower are ignored): unit-norm features
        {modality: [n, D], "study": [k, D] fused}, the batch rows of each, and the towers'
        extra outputs {modality: [n, ...]} (the echo view weights)."""
        features, rows, extras = {}, {}, {}
        for m in self.towers:
            if m in inputs:
                features[m], extra = self._embed(m, inputs[m])
                rows[m] = inputs[m]["rows"].to(self.device)
                if extra is not None:
                    extras[m] = extra
        if features:
            features[STUDY], rows[STUDY] = self.fuse(features, rows, batch_size)
        return features, rows, extras

    @torch.no_grad()
    def encode_study(self, study_inputs: dict[str, dict] | Study) -> dict[str, torch.Tensor]:
        """Embeddings [D] of one study: one per modality, the fused "study", and the echo
        "echo_view_weights" [V]. Takes preprocessed tensors per modality (unbatched, or with a
        batch of 1), or a `Study`, read and preprocessed by this model's `CardioProcessor`.
        Call `model.eval()` first."""
        if isinstance(study_inputs, Study):
            study_inputs = CardioProcessor.from_model(self)(study_inputs)
        row = torch.zeros(1, dtype=torch.long, device=self.device)
        batch = {m: {**_as_batch_of_one(tower, study_inputs[m]), "rows": row}
                 for m, tower in self.towers.items() if m in study_inputs}
        if not batch:
            raise ValueError(
                f"the study has none of this model's modalities {self.modalities}; "
                f"got {sorted(study_inputs)}"
            )
        features, _, extras = self.encode_studies(batch, 1)
        return {**{k: v[0] for k, v in features.items()},
                **{f"{m}_view_weights": v[0] for m, v in extras.items()}}

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
        with torch.device("meta"):  # sizes only: a config that does not fit is refused unbuilt
            skeleton = cls(config, text_folder=folder / TOKENIZER_DIR)
        check_weights_fit(skeleton, folder / WEIGHTS_FILE, fits=CONFIG_FILE, allow_missing=OPTIONAL_STATE)
        model = cls(config, text_folder=folder / TOKENIZER_DIR)
        load_weights(model, folder / WEIGHTS_FILE, fits=CONFIG_FILE, allow_missing=OPTIONAL_STATE,
                     device=device)
        return model.to(device)


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last axis, in at least fp32 (see the module docstring)."""
    return F.normalize(full_precision(x), dim=-1)


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
