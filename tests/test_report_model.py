"""The report head's network: tokenizer, prefix projection, loss masking and generation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcardio.report.config import ReportHeadConfig, TinyLMConfig
from mmcardio.report.model import PREFIX_KEYS, ReportHead, build_tiny_lm, positions, train_tokenizer
from mmcardio.report.train import Example, collate

REPORTS = ["ECG: sinus rhythm, rate 72 bpm. Impression: normal ECG.",
           "Echo: LVEF 35%: moderately reduced left ventricular systolic function.",
           "心电图：心房颤动，心室率118次/分。结论：房颤。",
           "超声心动图：左室射血分数35%，左室收缩功能中度减低。"]
DIM = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(REPORTS * 5, vocab_size=400)


def _head(tokenizer, seed: int = 0) -> ReportHead:
    torch.manual_seed(seed)
    cfg = ReportHeadConfig(tiny=TinyLMConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=400, n_positions=256))
    lm = build_tiny_lm(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return ReportHead(lm, tokenizer, DIM, prefix_tokens=2)


def _example(tokenizer, prompt: str, target: str, present: tuple[bool, ...], seed: int) -> Example:
    vectors = np.random.default_rng(seed).normal(size=(len(PREFIX_KEYS), DIM)).astype(np.float32)
    ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] if target else []
    return Example("s", "en", "ecg", vectors * np.array(present)[:, None], np.array(present),
                   tokenizer(prompt, add_special_tokens=False)["input_ids"], ids)


def test_tokenizer_reads_both_languages_and_unseen_characters_without_unknowns(tokenizer):
    for text in [*REPORTS, "QTc 452 ms; 左房容积 61 mL", "Aortenklappe: Stenose, Vmax 4,1 m/s; 二尖瓣反流"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text


def test_loss_counts_only_report_tokens(tokenizer):
    head = _head(tokenizer)
    a = _example(tokenizer, "findings: afib\nreport:", REPORTS[0], (True, False, False, False, True), 0)
    batch = collate([a], tokenizer.pad_token_id)
    assert (batch["labels"][0, : len(a.prompt_ids)] == -100).all()
    assert batch["labels"][0, len(a.prompt_ids):].tolist() == a.target_ids
    # changing the prompt's labels region cannot change the loss; changing the target must
    loss = head(batch)
    other = collate([_example(tokenizer, "findings: afib\nreport:", REPORTS[1], (True, False, False, False, True), 0)],
                    tokenizer.pad_token_id)
    assert not torch.isclose(loss, head(other))


def test_absent_modalities_and_left_padding_change_nothing(tokenizer):
    """A study generates the same tokens alone and in a left-padded batch beside a longer
    prompt: positions count attended tokens only, so masked prefix slots and padding are inert."""
    head = _head(tokenizer).eval()
    short = _example(tokenizer, "report:", "", (True, False, False, False, True), 1)
    long = _example(tokenizer, "measurements: lvef 35 %; lvedv 180 mL\nfindings: reduced_ef\nreport:", "",
                    (False, True, True, False, True), 2)
    alone, _ = head.generate(collate([short], tokenizer.pad_token_id, left=True), 12)
    batched, _ = head.generate(collate([long, short], tokenizer.pad_token_id, left=True), 12)
    assert batched[1] == alone[0]
    mask = torch.tensor([[0, 0, 1, 1, 0, 1]])
    assert positions(mask).tolist() == [[0, 0, 0, 1, 1, 2]]


def test_the_head_learns_to_write_what_its_prefix_says(tokenizer):
    """Two studies with the same prompt and different embeddings: after a short fit, greedy
    decoding writes each one's own report (the prefix carries the study)."""
    head = _head(tokenizer, seed=1)
    pairs = [_example(tokenizer, "report:", REPORTS[i], (True,) * len(PREFIX_KEYS), 10 + i) for i in (0, 1)]
    batch = collate(pairs, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    first = float(head(batch).detach())
    for _ in range(150):
        loss = head(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(loss) < 0.05 * first
    head.eval()
    drafts = [_example(tokenizer, "report:", "", (True,) * len(PREFIX_KEYS), 10 + i) for i in (0, 1)]
    ids, probs = head.generate(collate(drafts, tokenizer.pad_token_id, left=True), 60)
    assert [tokenizer.decode(r) for r in ids] == REPORTS[:2]
    assert all(0 < p <= 1 for row in probs for p in row)
