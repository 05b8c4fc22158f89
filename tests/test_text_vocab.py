"""Vocabulary extension: Chinese characters an English tokenizer reads as [UNK] become tokens."""
from __future__ import annotations

import torch

from mmcardio.model import CardioCLIP, create_model

REPORTS = ["心房颤动，心室率110次/分。", "窦性心律，左心室射血分数降低。", "心房颤动。atrial fibrillation"]


def test_unknown_characters_become_tokens_and_survive_save_load(tmp_path):
    model = create_model("cardioclip-tiny", text="text-minilm").eval()
    unk = model.text.tokenizer.unk_token_id
    before = model.text.tokenize(REPORTS)["input_ids"]
    assert (before == unk).sum() > 5  # MiniLM's vocabulary lacks most of these characters

    added = model.text.extend_vocabulary(REPORTS, min_count=2)
    assert {"颤", "房"} <= set(added) and "射" not in added  # "射" occurs once only
    after = model.text.tokenize(REPORTS)["input_ids"]
    assert (after == unk).sum() < (before == unk).sum()
    assert model.text.model.get_input_embeddings().num_embeddings == len(model.text.tokenizer)

    model.save_pretrained(tmp_path / "m")
    loaded = CardioCLIP.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(loaded.text.tokenize(REPORTS)["input_ids"], after)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(REPORTS), loaded.encode_text(REPORTS), atol=1e-6)
