"""The report head's network: a causal LM from transformers reading prefix tokens projected
from CardioCLIP embeddings (LLaVA-style: one small MLP per modality, `prefix_tokens` tokens
each), then the prompt text (`evidence.prompt_text`), then writing the report.

A "tiny" LM is a GPT-2 built here with a byte-level BPE vocabulary learned from the training
reports; any other LM is a
local transformers folder, adapted with LoRA (peft). Positions count only attended tokens,
so a modality a study lacks (its prefix slots masked) shifts nothing, in training and in
batched left-padded generation alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mmcardio.report.config import ReportHeadConfig
from mmcardio.report.evidence import MODALITY_KEYS, STUDY_KEY
from mmcardio.weights import refuse_pickled_code

PREFIX_KEYS = (*MODALITY_KEYS, STUDY_KEY)
PAD, EOS = "<pad>", "<eos>"
IGNORE = -100


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer (no unknown characters in any language) learned from `texts`.
    Numbers stay whole tokens where frequent: shorter sequences, and the grounding checks
    every number the LM writes anyway."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)


def build_tiny_lm(cfg: ReportHeadConfig, vocab_size: int, eos_id: int, pad_id: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    t = cfg.tiny
    config = GPT2Config(vocab_size=vocab_size, n_positions=t.n_positions, n_embd=t.n_embd, n_layer=t.n_layer,
                        n_head=t.n_head, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                        resid_pdrop=t.dropout, embd_pdrop=t.dropout, attn_pdrop=t.dropout)
    return GPT2LMHeadModel(config)


def load_pretrained_lm(path: str | Path, lora_rank: int, targets: list[str] | None):
    """A local causal LM and its tokenizer; with `lora_rank`, wrapped in a peft LoRA adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with refuse_pickled_code(path, "lm"):
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.05,
                                           target_modules=targets or "all-linear", task_type="CAUSAL_LM"))
    return lm, tokenizer


class ReportHead(nn.Module):
    """LM + per-modality prefix projectors."""

    def __init__(self, lm: nn.Module, tokenizer, clip_dim: int, prefix_tokens: int):
        super().__init__()
        self.lm, self.tokenizer, self.prefix_tokens = lm, tokenizer, prefix_tokens
        hidden = lm.get_input_embeddings().embedding_dim
        self.hidden = hidden
        self.projector = nn.ModuleDict({key: nn.Sequential(nn.Linear(clip_dim, hidden), nn.GELU(),
                                                           nn.Linear(hidden, prefix_tokens * hidden))
                                        for key in PREFIX_KEYS})

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def prefix(self, embeddings: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embeddings [B, K, D] in PREFIX_KEYS order, present [B, K] -> tokens [B, K*P, H], mask."""
        parts = [self.projector[key](embeddings[:, i]).view(len(embeddings), self.prefix_tokens, self.hidden)
                 for i, key in enumerate(PREFIX_KEYS)]
        mask = present.repeat_interleave(self.prefix_tokens, dim=1)
        return torch.cat(parts, dim=1), mask.long()

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, prefix_mask = self.prefix(batch["embeddings"], batch["present"])
        text = self.lm.get_input_embeddings()(batch["input_ids"])
        return torch.cat([tokens, text], dim=1), torch.cat([prefix_mask, batch["attention_mask"]], dim=1)

    def forward(self, batch: dict) -> torch.Tensor:
        """Mean cross-entropy of the report tokens (labels IGNORE elsewhere)."""
        embeds, mask = self._inputs(batch)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask)).logits
        labels = torch.cat([torch.full(batch["present"].shape[:1] + (embeds.shape[1] - batch["labels"].shape[1],),
                                       IGNORE, device=embeds.device), batch["labels"]], dim=1)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                           ignore_index=IGNORE)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int,
                 repetition_penalty: float = 1.0) -> tuple[list[list[int]], list[list[float]]]:
        """Greedy decoding of a left-padded prompt batch: token ids and their probabilities.
        Tokens already written have their logits divided by `repetition_penalty` (CTRL's,
        Keskar et al. 2019), which stops a small LM from repeating a phrase until the budget ends."""
        embeds, mask = self._inputs(batch)
        written = torch.zeros(len(embeds), self.lm.get_output_embeddings().weight.shape[0], dtype=torch.bool,
                              device=embeds.device)
        eos, done = self.tokenizer.eos_token_id, torch.zeros(len(embeds), dtype=torch.bool, device=embeds.device)
        ids, probs, cache = [], [], {}
        pos = positions(mask)
        for _ in range(max_new_tokens):
            out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True, **cache)
            logits = out.logits[:, -1].float()
            penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
            p, token = torch.where(written, penalised, logits).softmax(-1).max(-1)
            written[torch.arange(len(token)), token] = True
            token = torch.where(done, torch.full_like(token, eos), token)
            ids.append(token)
            probs.append(p)
            done |= token == eos
            if bool(done.all()):
                break
            cache, embeds = _cache_argument(out), self.lm.get_input_embeddings()(token[:, None])
            pos = pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return _until_eos(torch.stack(ids, 1).tolist(), torch.stack(probs, 1).tolist(), eos)


def _cache_argument(out) -> dict:
    """The key-value cache to pass on: `cache` from transformers 5, `past_key_values` before."""
    return {"cache": out.cache} if hasattr(out, "cache") else {"past_key_values": out.past_key_values}


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting attended tokens only."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _until_eos(ids: list[list[int]], probs: list[list[float]], eos: int) -> tuple[list[list[int]], list[list[float]]]:
    cut = [row.index(eos) if eos in row else len(row) for row in ids]
    return [r[:c] for r, c in zip(ids, cut)], [p[:c] for p, c in zip(probs, cut)]
