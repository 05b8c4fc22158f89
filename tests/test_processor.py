"""CardioProcessor: built from a model or its saved folder, it reads studies and tokenizes
reports as the model does, and feeds the same encoding path as the dataset and the store."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from mmcardio.datasets.cohort import StudyDataset, collate_studies
from mmcardio.datasets.preprocess_config import PreprocessConfig
from mmcardio.datasets.synthetic.ecg import ECGParams, synth_ecg
from mmcardio.datasets.writers.ecg import write_ecg
from mmcardio.errors import MMCardioError
from mmcardio.model import create_model
from mmcardio.processor import CardioProcessor
from mmcardio.study import Study

PREPROCESS = {"ecg": {"fs": 250.0, "samples": 1000, "windows": 2}}
REPORTS = ["Sinus rhythm, rate 72 bpm.", "Atrial fibrillation. LVEF 35 %.", "窦性心律，左室射血分数35%。"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = create_model("cardioclip-tiny", towers={"ecg": "ecg-tiny"}, cross_modal_pairs=[],
                         preprocess=PREPROCESS)
    model.text.fit_tokenizer(REPORTS * 2)
    return model.eval()


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> list[Study]:
    root = tmp_path_factory.mktemp("ecgs")
    return [Study(f"s{i}", f"p{i}", report=REPORTS[i % 2],
                  ecg=write_ecg(synth_ecg(ECGParams(), np.random.default_rng(i), fs=500.0), root / f"s{i}.hea"))
            for i in range(3)]


def test_from_pretrained_restores_preprocess_modalities_and_tokenizer(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    processor = CardioProcessor.from_pretrained(tmp_path / "model")
    assert processor.preprocess == PreprocessConfig.from_dict(PREPROCESS)
    assert processor.modalities == model.modalities == ["ecg"]
    assert next(processor.text.parameters()).is_meta  # the tokenizer without the weights
    texts = [*REPORTS, "LVEF 35 %", "unseen words 心"]
    ours, theirs = processor.tokenize(texts), model.text.tokenize(texts)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    shutil.rmtree(tmp_path / "model" / "tokenizer")
    with pytest.raises(MMCardioError, match="tokenizer"):
        CardioProcessor.from_pretrained(tmp_path / "model")


def test_from_model_reads_studies_and_shares_the_text_tower(model, studies):
    processor = CardioProcessor.from_model(model)
    assert processor.text is model.text
    inputs = processor(studies[0])
    assert list(inputs) == ["ecg"] and inputs["ecg"]["signal"].shape == (2, 12, 1000)  # 2 windows
    prepared = processor.prepare(studies[0])
    assert sorted(prepared) == ["ecg.lead_mask", "ecg.signal"]
    assert torch.equal(processor.sample(prepared)["ecg"]["signal"], inputs["ecg"]["signal"])
    drawn = processor.sample(prepared, np.random.default_rng(0))["ecg"]["signal"]
    assert drawn.shape == (12, 1000)  # training: one random window


def test_workers_get_the_processor_without_its_text_tower(model):
    processor = CardioProcessor.from_model(model)
    copy = pickle.loads(pickle.dumps(processor))
    assert copy.preprocess == processor.preprocess and copy.modalities == processor.modalities
    assert copy.text is None and processor.text is model.text
    with pytest.raises(MMCardioError, match="no tokenizer"):
        copy.tokenize(["sinus rhythm"])


def test_encode_study_and_batches_of_the_dataset_agree(model, studies):
    processor = CardioProcessor.from_model(model)
    batch = collate_studies([StudyDataset(studies, processor, train=False)[i] for i in range(3)])
    with torch.no_grad():
        features, rows, extras = model.encode_studies(batch, 3)
    assert sorted(features) == ["ecg", "study"] and rows["study"].tolist() == [0, 1, 2] and not extras
    for i, study in enumerate(studies):
        single = model.encode_study(study)
        assert torch.allclose(single["ecg"], features["ecg"][i], atol=1e-6)
        assert torch.allclose(single["study"], features["study"][i], atol=1e-6)
