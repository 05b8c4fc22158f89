"""Pretraining on a tiny phantom cohort: configs, metrics, the final model, bit-exact resume,
two processes under `accelerate launch`, the ECG MAE stage and its evaluation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from mmcardio.cli import main as cli_main
from mmcardio.config import read_mapping
from mmcardio.datasets.cache import prepare_cache
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.model import CardioCLIP
from mmcardio.processor import CardioProcessor
from mmcardio.sentences import report_sentences
from mmcardio.study import read_manifest
from mmcardio.train.config import load_pretrain_config, model_config_dict, run_preprocess
from mmcardio.train.data import training_reports
from mmcardio.train.loop import Meter
from mmcardio.train.mae_eval import held_out_dataset, mean_prediction, pearson
from mmcardio.train.objective import PretrainObjective, enable_grad_checkpointing, param_groups
from mmcardio.train.pretrain import build_model, run_pretraining

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
FAST = ["batch_size=4", "log_every=1", "num_workers=0", "optimizer.warmup_steps=2"]


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """16 phantom studies and their cache (tiny preprocessing), made once per session."""
    root = tmp_path_factory.mktemp("pretrain")
    generate_cohort(root / "cohort", 16, seed=0, progress=False, workers=1)
    cfg = load_pretrain_config(TINY)
    prepare_cache(root / "cohort" / "manifest.csv", root / "cache", CardioProcessor(run_preprocess(cfg)),
                  progress=False)
    return root


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (accelerate keeps process-wide state)."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def pretrain(phantom: Path, out: Path, *sets: str, extra: tuple[str, ...] = ()) -> dict:
    args = ["pretrain", "--config", str(TINY), "--manifest", str(phantom / "cohort" / "manifest.csv"),
            "--out", str(out), "--cache", str(phantom / "cache"), "--json", *extra]
    for item in (*FAST, *sets):
        args += ["--set", item]
    assert cli_main(args) == 0
    return json.loads((out / "run.json").read_text())


def start_weights() -> dict[str, torch.Tensor]:
    """The weights a run with the tiny config's seed starts from."""
    cfg = load_pretrain_config(TINY)
    set_seed(cfg.seed)
    return build_model(cfg).state_dict()


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_config_layers_file_stage_overrides_and_set(tmp_path):
    cfg = load_pretrain_config(TINY, ["optimizer.lr=0.01", "cross_modal_pairs=[[ecg, cmr]]"])
    assert cfg.stage == "align" and cfg.optimizer.lr == 0.01 and cfg.cross_modal_pairs == [["ecg", "cmr"]]
    mae, mae_overrides = load_pretrain_config(TINY, ["stage=mae"]), read_mapping(TINY)["stage_overrides"]["mae"]
    assert cfg.max_steps is None and mae.max_steps == mae_overrides["max_steps"]  # the file's stage_overrides.mae
    assert mae.optimizer.lr == mae_overrides["optimizer"]["lr"] and mae.optimizer.weight_decay == cfg.optimizer.weight_decay
    assert load_pretrain_config(TINY, ["stage=mae", "max_steps=7"]).max_steps == 7  # --set wins
    with pytest.raises(ConfigError, match="unknown key"):
        load_pretrain_config(TINY, ["optimizer.learning_rate=1"])
    with pytest.raises(ConfigError, match="stage"):
        load_pretrain_config(TINY, ["stage=finetune"])
    with pytest.raises(ConfigError, match="expected one of .*clause.*, got 'word'"):
        load_pretrain_config(TINY, ["text_unit=word"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage_overrides: {mea: {max_steps: 1}}\n")
    with pytest.raises(ConfigError, match="unknown stage"):
        load_pretrain_config(bad)


def test_sizes_come_from_the_model_and_settings_from_the_run():
    cfg = load_pretrain_config(TINY, ["preprocess.ecg.notch_hz=60"])
    model_cfg = model_config_dict(cfg)
    towers, pre = model_cfg["towers"], model_cfg["preprocess"]
    assert pre["ecg"]["fs"] == towers["ecg"]["input_fs"] and pre["ecg"]["samples"] == towers["ecg"]["input_samples"]
    assert pre["ct"]["shape"] == towers["ct"]["input_size"] and pre["echo"]["size"] == towers["echo"]["input_size"]
    assert pre["ecg"]["notch_hz"] == 60 and pre["ct"]["window_hu"] == [-200.0, 800.0]
    with pytest.raises(ConfigError, match="preprocess.ct.shape"):  # the model refuses a size it cannot take
        model_config_dict(load_pretrain_config(TINY, ["preprocess.ct.shape=[16, 64, 64]"]))


def test_translated_reports_feed_the_vocabulary_only_when_training_uses_them(phantom):
    manifest = phantom / "cohort" / "manifest.csv"
    train = [s for s in read_manifest(manifest) if s.split == "train"]
    plain = ["translation_views=false", "train_on_translations=false"]
    own = training_reports(load_pretrain_config(TINY, plain), manifest)
    assert own == [t for s in train for t in (s.report, *s.reports.values()) if t]
    twins = [s.in_language(lang) for s in train for lang in s.languages()]
    for flag in ("translation_views", "train_on_translations"):
        both = training_reports(load_pretrain_config(TINY, [*plain, f"{flag}=true"]), manifest)
        assert both == [t for s in twins for t in (s.report, *s.reports.values()) if t]
        assert len(both) > len(own) and {s.report_lang for s in twins} == {"en", "zh"}


def test_weight_decay_only_on_matrix_weights():
    model = build_model(load_pretrain_config(TINY))
    decay, no_decay = param_groups(model, 0.05)
    decayed = {id(p) for p in decay["params"]}
    names = {name: id(p) in decayed for name, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert not names["logit_scale"] and not names["towers.ecg.lead_embed"] and not names["towers.ecg.cls_token"]
    assert not any(v for k, v in names.items() if "norm" in k.lower() or k.endswith(".bias"))
    assert not any(v for k, v in names.items() if "embeddings.word_embeddings" in k)
    assert names["heads.ecg.weight"] and names["towers.ecg.encoder.layers.0.self_attn.in_proj_weight"]


def test_align_run_logs_decreasing_loss_and_saves_a_loadable_model(phantom, tmp_path):
    out = tmp_path / "run"
    # batches of 4 make single steps noisy: the loss is compared over intervals of 6 steps
    summary = pretrain(phantom, out, "max_steps=24", "log_every=6", "optimizer.lr=1e-3")
    lines = metrics(out)
    assert [m["step"] for m in lines] == [6, 12, 18, 24]
    expected = {"step", "epoch", "loss", "losses", "lr", "samples_per_s", "data_wait_share", "flops_per_sample"}
    assert all(set(m) == expected for m in lines)
    assert {"ecg", "echo"} <= set(lines[0]["losses"]) and lines[0]["flops_per_sample"] > 1e6
    assert lines[0]["data_wait_share"] > 0 and lines[0]["samples_per_s"] > 0  # the loader's waits are timed
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert lines[-1]["lr"] < lines[1]["lr"]  # cosine decay after warmup
    assert summary["status"] == "finished" and summary["world_size"] == 1 and summary["steps"] == 24
    assert summary["first_loss"] == lines[0]["loss"] and summary["final_loss"] == lines[-1]["loss"]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    model = CardioCLIP.from_pretrained(out / "final").eval()
    assert model.config.preprocess == run_preprocess(load_pretrain_config(TINY)).to_dict()
    study = next(s for s in read_manifest(phantom / "cohort" / "manifest.csv") if s.ecg and s.echo)
    emb = model.encode_study(study)
    text = model.encode_text(["Sinus rhythm, normal ECG."])
    assert emb["study"].shape == (64,) and text.shape == (1, 64)
    # the scratch text tower's vocabulary, learned from the training reports, travels with the model
    learned = json.loads((out / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert model.text.tokenizer.get_vocab() == learned and "sinus" in learned
    assert torch.linalg.vector_norm(emb["study"]).item() == pytest.approx(1.0, abs=1e-4)
    # search queries are centred on the mean of the training reports' distinct sentences, in
    # both languages (the tiny config's translation views train on the manifest translations)
    training = [s.in_language(lang) for s in read_manifest(phantom / "cohort" / "manifest.csv")
                if s.split == "train" for lang in s.languages()]
    sentences = sorted({x for s in training for t in (s.report, *s.reports.values()) for x in report_sentences(t)})
    with torch.no_grad():
        mean = torch.cat([model.encode_text(sentences[i:i + 64]) for i in range(0, len(sentences), 64)]).mean(0)
    assert torch.allclose(model.query_center, mean, atol=1e-5) and mean.norm() > 0.1


def test_meter_averages_each_term_where_it_occurs_and_shares_out_the_data_wait():
    meter = Meter(["ecg", "echo"])
    meter.add({"loss": torch.tensor(1.0), "losses": {"ecg": torch.tensor(2.0)}}, 4, wait=0.5)
    meter.add({"loss": torch.tensor(3.0), "losses": {"ecg": torch.tensor(4.0), "echo": torch.tensor(6.0)}},
              4, wait=0.25)
    meter.start -= 3.0  # as if the interval had lasted three seconds
    summary = meter.summary(SimpleNamespace(device="cpu", reduce=lambda tensor, op: tensor))  # one process
    assert summary["loss"] == 2.0 and summary["losses"] == {"ecg": 3.0, "echo": 6.0}
    assert summary["data_wait_share"] == pytest.approx(0.75 / 3, rel=1e-2)
    assert summary["samples_per_s"] == pytest.approx(8 / 3, rel=1e-2)


def test_resume_ends_with_the_same_weights(phantom, tmp_path):
    sets = ("max_steps=4", "checkpoint_every=2")
    pretrain(phantom, tmp_path / "full", *sets)
    stopped = pretrain(phantom, tmp_path / "cut", *sets, "stop_at_step=2")
    assert stopped["status"] == "stopped" and not (tmp_path / "cut" / "final").exists()
    assert (tmp_path / "cut" / "checkpoints" / "step_2" / "train_state.json").is_file()
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "loss": 1.')  # a kill cut the last log line short
    resumed = pretrain(phantom, tmp_path / "cut", *sets, extra=("--resume",))
    assert resumed["status"] == "finished" and resumed["steps"] == 4
    full = load_file(tmp_path / "full" / "final" / "model.safetensors")
    cut = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    assert [m["loss"] for m in metrics(tmp_path / "full")] == [m["loss"] for m in metrics(tmp_path / "cut")]
    changed = load_pretrain_config(TINY, [*FAST, *sets, "optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="different run config"):
        run_pretraining(changed, phantom / "cohort" / "manifest.csv", tmp_path / "cut", resume=True)
    fresh = pretrain(phantom, tmp_path / "never", *sets, extra=("--resume",))  # no checkpoint yet
    never = load_file(tmp_path / "never" / "final" / "model.safetensors")
    assert fresh["steps"] == 4 and all(torch.equal(full[k], never[k]) for k in full)


def test_a_damaged_checkpoint_is_refused_naming_it(phantom, tmp_path):
    pretrain(phantom, tmp_path / "run", "max_steps=2", "checkpoint_every=2", "stop_at_step=2")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_2"
    weights = next(checkpoint.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    cfg = load_pretrain_config(TINY, [*FAST, "max_steps=2", "checkpoint_every=2", "stop_at_step=2"])
    with pytest.raises(MMCardioError, match="checkpoint cannot be loaded") as caught:
        run_pretraining(cfg, phantom / "cohort" / "manifest.csv", tmp_path / "run", resume=True)
    assert caught.value.path == str(checkpoint)


def test_two_processes_under_accelerate_launch(phantom, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               str(REPO / "scripts" / "pretrain.py"), "--config", str(TINY),
               "--manifest", str(phantom / "cohort" / "manifest.csv"), "--out", str(out),
               "--cache", str(phantom / "cache")]
    for item in (*FAST, "max_steps=3", "batch_size=2"):
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and "MULTI_CPU" in ranks[0]["distributed_type"]
    assert ranks[0]["param_sha256"] == ranks[1]["param_sha256"] and ranks[0]["step"] == 3
    summary = json.loads((out / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["samples"] == 3 * 2 * 2
    final = load_file(out / "final" / "model.safetensors")
    initial = start_weights()
    assert not torch.equal(final["towers.ecg.stem.0.linear.weight"], initial["towers.ecg.stem.0.linear.weight"])


def test_mae_stage_trains_the_ecg_tower_only_and_reports_reconstruction(phantom, tmp_path):
    out = tmp_path / "mae"
    summary = pretrain(phantom, out, "stage=mae", "max_steps=3")
    start = start_weights()
    final = load_file(out / "final" / "model.safetensors")
    assert not torch.equal(final["towers.ecg.decoder.head.weight"], start["towers.ecg.decoder.head.weight"])
    assert torch.equal(final["heads.ecg.weight"], start["heads.ecg.weight"])
    echo = [k for k in start if k.startswith("towers.echo.")]
    assert echo and all(torch.equal(final[k], start[k]) for k in echo)  # no other tower moves
    assert set(metrics(out)[0]["losses"]) == {"ecg_mae"}
    report = summary["mae_eval"]
    held_out = [s for s in read_manifest(phantom / "cohort" / "manifest.csv") if s.split != "train" and s.ecg]
    assert report["n_ecgs"] == len(held_out) > 0 and report["n_chest_leads_scored"] > 0
    assert 0 < report["mae_vs_mean_ratio"] < 10
    # the figure is the mean Pearson r (numpy's) of V1-V6 rebuilt by the final model from lead I alone
    model, correlations = CardioCLIP.from_pretrained(out / "final").eval(), []
    mae_preprocess = run_preprocess(load_pretrain_config(TINY, ["stage=mae"]))
    for item in held_out_dataset(held_out, mae_preprocess, phantom / "cache"):
        signal, leads = item["ecg"]["signal"][None], item["ecg"]["lead_mask"]
        with torch.no_grad():
            rebuilt = model.towers["ecg"].reconstruct_leads(signal, torch.arange(12)[None] == 0)[0].numpy()
        correlations += [np.corrcoef(rebuilt[k], signal[0, k].numpy())[0, 1] for k in range(6, 12) if leads[0] and leads[k]]
    assert report["n_chest_leads_scored"] == len(correlations)
    assert report["lead_reconstruction_corr"] == pytest.approx(np.mean(correlations), abs=1e-6)
    # the alignment stage starts from the MAE run's weights and inherits its text vocabulary
    assert (out / "final" / "tokenizer" / "tokenizer.json").read_text() == (out / "tokenizer" / "tokenizer.json").read_text()
    aligned = build_model(load_pretrain_config(TINY, [f"init_from={out / 'final'}"]))
    assert torch.equal(aligned.state_dict()["towers.ecg.decoder.head.weight"], final["towers.ecg.decoder.head.weight"])
    # a sigmoid-loss alignment starts from these softmax-loss weights: the bias and the
    # temperature start from the config, every other weight from the MAE run
    sigmoid = build_model(load_pretrain_config(TINY, [f"init_from={out / 'final'}", "loss=siglip"]))
    assert torch.equal(sigmoid.state_dict()["towers.ecg.decoder.head.weight"], final["towers.ecg.decoder.head.weight"])
    assert sigmoid.logit_bias.item() == sigmoid.config.init_logit_bias
    assert sigmoid.logit_scale.item() == pytest.approx(sigmoid.config.init_logit_scale)
    with pytest.raises(ConfigError, match="do not fit.*towers.ecg"):  # another architecture is still refused
        build_model(load_pretrain_config(TINY, [f"init_from={out / 'final'}", "model_overrides.towers.ecg.depth=2"]))


def test_mean_predictor_and_pearson_against_numpy():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(2, 3, 8)).astype(np.float32)
    visible = rng.random((2, 3, 8)) < 0.5
    visible[1, 2] = False  # a whole lead hidden: falls back to the ECG's visible mean
    pred = mean_prediction(torch.from_numpy(signal), torch.from_numpy(visible)).numpy()
    assert pred[0, 1, 0] == pytest.approx(signal[0, 1][visible[0, 1]].mean(), abs=1e-6)
    assert pred[1, 2, 5] == pytest.approx(signal[1][visible[1]].mean(), abs=1e-6)
    a, b = rng.normal(size=(4, 50)), rng.normal(size=(4, 50))
    expected = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
    assert pearson(torch.from_numpy(a), torch.from_numpy(b)).numpy() == pytest.approx(expected, abs=1e-9)


def test_grad_checkpointing_gives_the_same_loss_and_gradients(phantom):
    from mmcardio.datasets.cohort import StudyDataset, collate_studies
    from mmcardio.losses import CardioCLIPLoss

    cfg = load_pretrain_config(TINY)
    studies = read_manifest(phantom / "cohort" / "manifest.csv")
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg)
        model.text.fit_tokenizer([s.report for s in studies])
        dataset = StudyDataset(studies, CardioProcessor(run_preprocess(cfg), model.modalities),
                               cache_dir=phantom / "cache", split="train")
        batch = collate_studies([dataset[i] for i in range(4)])
        if checkpointing:
            enable_grad_checkpointing(model)
        objective = PretrainObjective(model, "align", CardioCLIPLoss.from_config(model.config))
        loss = objective(batch)["loss"]
        loss.backward()
        grads.append((loss.item(), {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
                                    for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and grad_a.keys() == grad_b.keys()
    assert all(torch.allclose(grad_a[k], grad_b[k], atol=1e-6) for k in grad_a)


def test_translation_views_need_report_views(phantom, tmp_path):
    cfg = load_pretrain_config(TINY, [*FAST, "max_steps=1", "translation_views=true",
                                      "model_overrides.report_views=false"])
    with pytest.raises(ConfigError, match="report_views") as err:
        run_pretraining(cfg, phantom / "cohort" / "manifest.csv", tmp_path / "run", cache=phantom / "cache",
                        progress=False)
    assert err.value.field == "translation_views"
    assert not (tmp_path / "run" / "prepare.json").exists()  # refused before any cache work


def test_cache_made_with_other_preprocessing_is_refused(phantom, tmp_path):
    cfg = load_pretrain_config(TINY, [*FAST, "max_steps=1", "preprocess.ecg.notch_hz=50"])
    with pytest.raises(ConfigError, match=r"ecg.notch_hz"):
        run_pretraining(cfg, phantom / "cohort" / "manifest.csv", tmp_path / "run", cache=phantom / "cache",
                        progress=False)
