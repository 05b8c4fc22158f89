"""SAM/MedSAM segmenters: the real vit_b key layout, refusal of pickled code, MedSAM
preprocessing against hand-computed numbers, the tiny model end to end and LoRA adapters."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hostile import Payload
from safetensors import safe_open
from segment_anything import sam_model_registry

from mmcardio.adapters.lora import add_lora, load_lora, save_lora, trainable_share
from mmcardio.adapters.sam import (
    CardiacPredictor,
    build_sam,
    load_sam_checkpoint,
    load_segmenter,
    sam_config,
    save_segmenter,
)
from mmcardio.adapters.sam_preprocess import medsam_preprocess, normalise_intensity
from mmcardio.errors import ConfigError


def disc_image(height: int = 100, width: int = 140, radius: float = 20.0) -> np.ndarray:
    """A bright disc centred at (x=70, y=50) on a dim background (never 0, so no pixel is
    background for the percentile clip)."""
    yy, xx = np.mgrid[:height, :width]
    return np.where((yy - 50) ** 2 + (xx - 70) ** 2 < radius**2, 100.0, 10.0)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam("tiny").eval()


# --------------------------------------------------------------------- configs and checkpoints
def test_vit_b_checkpoint_in_segment_anything_layout_loads_exactly(tmp_path):
    torch.manual_seed(1)
    reference = sam_model_registry["vit_b"]()  # ~90M parameters, a few seconds
    path = tmp_path / "sam_vit_b.pth"
    torch.save(reference.state_dict(), path)
    ours = load_sam_checkpoint(build_sam("vit_b"), path)
    expected, got = reference.state_dict(), ours.state_dict()
    assert set(got) == set(expected) and len(got) > 200
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert ours.image_encoder.img_size == 1024 and ours.mask_decoder.num_multimask_outputs == 3


def test_wrapped_checkpoint_loads_and_misfits_are_named(tiny, tmp_path):
    state = tiny.state_dict()
    wrapped = tmp_path / "medsam_style.pth"
    torch.save({"model": state, "epoch": 3}, wrapped)
    loaded = load_sam_checkpoint(build_sam("tiny"), wrapped)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())

    broken = dict(state)
    del broken["mask_decoder.iou_token.weight"]
    broken["image_encoder.pos_embed"] = torch.zeros(1, 4, 4, 64)
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ConfigError) as err:
        load_sam_checkpoint(build_sam("tiny"), tmp_path / "broken.pth")
    message = str(err.value)
    for part in ("broken.pth", "mask_decoder.iou_token.weight", "extra.weight", "image_encoder.pos_embed"):
        assert part in message


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "payload_ran", tmp_path / "evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": Payload(marker)}, path)
    with pytest.raises(ConfigError, match="refused") as err:
        load_sam_checkpoint(build_sam("tiny"), path)
    assert "evil.pth" in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a plain load would have run it
    assert marker.read_text() == "ran"


def test_config_refuses_unknown_keys_and_wrong_values(tmp_path):
    assert sam_config("tiny").image_size == 128
    cases = [({"image_sise": 128}, "image_sise"), ({"encoder_depth": "2"}, "encoder_depth"),
             ({"image_size": 100}, "image_size"), ({"global_attn_indexes": [12]}, "global_attn_indexes")]
    for data, field in cases:
        path = tmp_path / "sam.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError) as err:
            sam_config(path)
        assert str(path) in str(err.value) and field in str(err.value)


def test_segmenter_folder_round_trip(tiny, tmp_path):
    save_segmenter(tiny, sam_config("tiny"), tmp_path / "seg")
    loaded, config = load_segmenter(tmp_path / "seg")
    assert config == sam_config("tiny")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())
    wider = {**json.loads((tmp_path / "seg" / "config.json").read_text()), "encoder_width": 96}
    (tmp_path / "seg" / "config.json").write_text(json.dumps(wider))
    with pytest.raises(ConfigError, match="config.json"):
        load_segmenter(tmp_path / "seg")


# --------------------------------------------------------------------- MedSAM preprocessing
def test_ct_window_then_min_max_by_hand():
    hu = np.array([[-1000.0, -160.0, 40.0], [240.0, 1000.0, 100.0]])
    # soft-tissue window 40 / 400 clips to [-160, 240]; then (x + 160) / 400
    expected = np.array([[0.0, 0.0, 0.5], [1.0, 1.0, 0.65]])
    np.testing.assert_allclose(normalise_intensity(hu, "ct"), expected)
    # a bone window 300 / 1500 clips to [-450, 1050]; the data's own min-max then gives:
    np.testing.assert_allclose(normalise_intensity(hu, "ct", window=(300.0, 1500.0)),
                               (np.clip(hu, -450, 1050) + 450) / 1450)


def test_mr_percentiles_over_foreground_and_black_background():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 50.0, size=(40, 50))
    image[:5] = 0.0
    low, high = np.percentile(image[image > 0], [0.5, 99.5])
    expected = (np.clip(image, low, high) - low) / (high - low)
    expected[:5] = 0.0
    got = normalise_intensity(image, "cmr")
    np.testing.assert_allclose(got, expected)
    assert got.min() == 0.0 and got.max() == 1.0
    with pytest.raises(ConfigError, match="modality"):
        normalise_intensity(image, "xray")


def test_resize_pad_geometry_and_box_mapping():
    prepared = medsam_preprocess(disc_image(), "echo", image_size=128)
    # 128 / 140 scales 100 rows to 91.4 -> 91 (SAM rounds half up), 140 columns to 128
    assert prepared.original_size == (100, 140) and prepared.input_size == (91, 128)
    assert prepared.image.shape == (3, 128, 128)
    assert torch.equal(prepared.image[0], prepared.image[2])
    assert prepared.image[:, 91:].abs().max() == 0  # zero padding below the picture
    assert 0.0 <= prepared.image.min() and prepared.image.max() <= 1.0
    np.testing.assert_allclose(prepared.box_to_input([14, 35, 70, 70]),
                               [[14 * 128 / 140, 35 * 91 / 100, 70 * 128 / 140, 70 * 91 / 100]])
    np.testing.assert_allclose(prepared.points_to_input([[140, 100]]), [[128, 91]])
    # no resize when the image already has the model's size: the pixels are the min-max values
    square = medsam_preprocess(np.arange(16.0).reshape(4, 4) - 5, "ct", image_size=4)
    np.testing.assert_allclose(square.image[0].numpy(), (np.arange(16.0).reshape(4, 4)) / 15, atol=1e-6)
    stack = medsam_preprocess(np.stack([disc_image()] * 3), "echo", image_size=128)
    assert stack.image.shape == (3, 3, 128, 128)


def test_mask_mapping_matches_sam_postprocess(tiny):
    prepared = medsam_preprocess(disc_image(), "echo", image_size=128)
    logits = torch.randn(1, 2, 32, 32)
    expected = tiny.postprocess_masks(logits, prepared.input_size, prepared.original_size)
    assert torch.equal(prepared.mask_to_original(logits), expected)


# --------------------------------------------------------------------- predictor end to end
def test_tiny_box_prompt_end_to_end_reuses_the_embedding(tiny):
    calls = []
    hook = tiny.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        predictor = CardiacPredictor(tiny, "echo")
        predictor.set_frames(np.stack([disc_image(), disc_image(radius=15)]))
        first = predictor.predict(0, box=[50, 30, 90, 70])
        second = predictor.predict(0, points=[[70, 50], [5, 5]], labels=[1, 0], multimask=True,
                                   mask_input=first.low_res_logits)
        assert len(calls) == 1  # two prompts on frame 0, one encoder run
        predictor.predict(1, box=[55, 35, 85, 65], mask_input=second.low_res_logits)
        assert len(calls) == 2
    finally:
        hook.remove()
    for result in (first, second):
        assert result.mask.shape == (100, 140) and result.mask.dtype == bool
        assert result.low_res_logits.shape == (1, 32, 32) and np.isfinite(result.iou)


# --------------------------------------------------------------------- LoRA
def test_vit_b_lora_rank_4_trains_under_five_percent():
    with torch.device("meta"):  # parameter counts only: no memory spent on 90M weights
        model = add_lora(build_sam("vit_b"), "echo")
    share = trainable_share(model)
    print(f"vit_b LoRA rank 4 (qkv) + mask decoder: trainable share {share:.4f}")
    assert 0 < share <= 0.05
    sam = model.get_base_model()
    assert not any(p.requires_grad for p in sam.prompt_encoder.parameters())
    assert all(p.requires_grad for n, p in sam.mask_decoder.named_parameters() if ".echo." in n)
    trainable = [n for n, p in sam.image_encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and n.split(".")[-4] == "qkv" for n in trainable)


def _box_logits(model: torch.nn.Module) -> torch.Tensor:
    predictor = CardiacPredictor(model, "echo")
    predictor.set_frames(disc_image())
    return predictor.predict(0, box=[50, 30, 90, 70]).low_res_logits


def test_adapters_differ_and_one_saved_alone_loads_back(tmp_path):
    torch.manual_seed(2)
    save_segmenter(build_sam("tiny").eval(), sam_config("tiny"), tmp_path / "base")
    base, _ = load_segmenter(tmp_path / "base")
    before = _box_logits(base)
    model = add_lora(add_lora(base, "echo"), "ct")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.echo" in name or "modules_to_save.echo" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.set_adapter("ct")
    ct = _box_logits(model)
    model.set_adapter("echo")
    echo = _box_logits(model)
    assert torch.equal(ct, before)  # LoRA B starts at zero, the decoder copy at the original
    assert (echo - ct).abs().max() > 1e-3

    folder = save_lora(model, "echo", tmp_path / "echo_adapter")
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as fh:
        names = list(fh.keys())
        saved = sum(int(np.prod(fh.get_slice(n).get_shape())) for n in names)
    assert all("lora_" in n or ".mask_decoder." in n for n in names)
    decoder = sum(p.numel() for p in build_sam("tiny").mask_decoder.parameters())
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and ".echo." in n)
    assert saved == decoder + lora < sum(p.numel() for p in build_sam("tiny").parameters())

    fresh, _ = load_segmenter(tmp_path / "base")
    reloaded = load_lora(fresh, folder, "echo")
    assert torch.equal(_box_logits(reloaded), echo)
