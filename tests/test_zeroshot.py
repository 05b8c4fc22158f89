"""End to end on a tiny real pipeline: phantom cohort -> untrained tiny CardioCLIP -> embed ->
index -> retrieve (EN and ZH) -> zero-shot evaluation with metrics.json, report.md and plots."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mmcardio.cli import main
from mmcardio.config import dump_yaml, load_yaml
from mmcardio.datasets.cache import prepare_cache
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.datasets.synthetic.findings import SHOWN_BY
from mmcardio.eval.prompts import FINDINGS, VALUES, default_prompts, prompts_from_dict
from mmcardio.eval.zeroshot import EvalContext, classify, linear_probe, numpy_encoder
from mmcardio.model import create_model
from mmcardio.processor import CardioProcessor
from mmcardio.retrieval import EmbeddingStore, embed_manifest
from mmcardio.retrieval.store import labelled, labels_of
from mmcardio.sentences import report_sentences
from mmcardio.study import LANGUAGES, read_manifest, write_manifest

N_STUDIES = 14


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A phantom cohort, a saved untrained tiny model and its embedding store."""
    root = tmp_path_factory.mktemp("zeroshot")
    generate_cohort(root / "cohort", N_STUDIES, seed=3, progress=False, workers=1)
    untrained_model(root / "cohort" / "manifest.csv", seed=0).save_pretrained(root / "model")
    return root


def untrained_model(manifest, seed: int):
    """The tiny CardioCLIP with random weights, its text vocabulary learned from the reports
    and its search queries centred on their sentences (as alignment leaves them)."""
    torch.manual_seed(seed)
    model = create_model("cardioclip-tiny")
    reports = [s.report for s in read_manifest(manifest)]
    model.text.fit_tokenizer(reports)
    model.fit_query_center(sorted({x for r in reports for x in report_sentences(r)}))
    return model


def _run(capsys, *argv: str) -> dict:
    code = main([*map(str, argv), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.fixture(scope="module")
def store(world):
    embed_manifest(world / "model", world / "cohort" / "manifest.csv", world / "store", progress=False)
    return EmbeddingStore.load(world / "store")


def test_store_holds_every_modality_fused_and_text(world, store):
    studies = read_manifest(world / "cohort" / "manifest.csv")
    towers = json.loads((world / "model" / "config.json").read_text())["towers"]
    for key in towers:
        expected = sorted(s.study_id for s in studies if key in map(str, s.modalities()))
        assert expected and sorted(store.select(key)[1]["study_id"]) == expected
    with_tower = sorted(s.study_id for s in studies if set(map(str, s.modalities())) & set(towers))
    assert sorted(store.select("study")[1]["study_id"]) == with_tower
    assert sorted(store.select("text")[1]["study_id"]) == sorted(s.study_id for s in studies if s.report)
    np.testing.assert_allclose(np.linalg.norm(store.vectors, axis=1), 1.0, atol=1e-5)
    echo_meta = store.select("echo")[1]
    assert all(v and set(v.split(";")) <= {"A4C", "A2C"} for v in echo_meta["view"])
    by_id = {s.study_id: s for s in studies}
    row = store.meta.iloc[0]
    assert labels_of(row) == by_id[row["study_id"]].labels


def test_store_vectors_equal_encode_study(world, store):
    model = create_model(world / "model").eval()
    study = read_manifest(world / "cohort" / "manifest.csv")[0]
    direct = model.encode_study(study)
    for key in [str(m) for m in study.modalities()] + ["study"]:
        vectors, _ = store.select(key, study_ids=[study.study_id])
        np.testing.assert_allclose(vectors[0], direct[key].numpy(), atol=1e-4)
    text, _ = store.select("text", study_ids=[study.study_id])
    with torch.inference_mode():
        np.testing.assert_allclose(text[0], model.encode_text([study.report])[0].numpy(), atol=1e-5)


def test_grown_manifest_embeds_only_new_studies(world, store, tmp_path, capsys):
    studies = read_manifest(world / "cohort" / "manifest.csv")
    write_manifest(studies[:3], tmp_path / "first3.csv")
    write_manifest(studies[:5], tmp_path / "first5.csv")
    model, out = world / "model", tmp_path / "grown"
    first = _run(capsys, "embed", "--model", model, "--manifest", tmp_path / "first3.csv", "--out", out)
    assert first["new_studies"] == 3 and first["studies"] == 3
    before = EmbeddingStore.load(out)
    second = _run(capsys, "embed", "--model", model, "--manifest", tmp_path / "first5.csv", "--out", out)
    assert second["new_studies"] == 2 and second["studies"] == 5
    after = EmbeddingStore.load(out)
    np.testing.assert_array_equal(after.vectors[:len(before.vectors)], before.vectors)
    ids = [s.study_id for s in studies[:5]]
    for key in after.keys:  # the appended store holds what one pass over everything gives
        grown_vectors, grown_meta = after.select(key)
        whole_vectors, whole_meta = store.select(key, study_ids=ids)
        grown = dict(zip(grown_meta["study_id"], grown_vectors))
        whole = dict(zip(whole_meta["study_id"], whole_vectors))
        assert set(grown) == set(whole)
        for study_id, vector in whole.items():
            np.testing.assert_allclose(grown[study_id], vector, atol=1e-5)
    again = _run(capsys, "embed", "--model", model, "--manifest", tmp_path / "first5.csv", "--out", out)
    assert again["new_studies"] == 0 and len(EmbeddingStore.load(out).vectors) == len(after.vectors)


def test_embedding_from_the_prepared_cache_gives_the_same_vectors(world, store, tmp_path, capsys):
    manifest = world / "cohort" / "manifest.csv"
    model = create_model(world / "model")
    studies = read_manifest(manifest)
    prepare_cache(studies[:9], tmp_path / "cache", CardioProcessor.from_model(model), progress=False)  # 5 left
    _run(capsys, "embed", "--model", world / "model", "--manifest", manifest, "--out", tmp_path / "store",
         "--cache", tmp_path / "cache")
    cached = EmbeddingStore.load(tmp_path / "store")
    for key in store.keys:
        a, meta_a = store.select(key)
        b, meta_b = cached.select(key)
        order = meta_b.reset_index(drop=True).reset_index().set_index("study_id").loc[meta_a["study_id"], "index"]
        np.testing.assert_allclose(b[order.to_numpy()], a, atol=1e-5, err_msg=key)


def test_store_refuses_another_model(world, tmp_path, capsys):
    manifest = world / "cohort" / "manifest.csv"
    untrained_model(manifest, seed=1).save_pretrained(tmp_path / "other")
    code = main(["embed", "--model", str(tmp_path / "other"), "--manifest", str(manifest),
                 "--out", str(world / "store"), "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 2
    assert str((world / "model").resolve()) in error and str((tmp_path / "other").resolve()) in error


def test_index_and_retrieve_english_chinese_and_cross_modal(world, store, capsys):
    built = _run(capsys, "index", "--store", world / "store", "--out", world / "index")
    assert built["counts"]["study"] == N_STUDIES
    model = create_model(world / "model").eval()
    vectors, meta = store.select("study")
    for query in ("reduced left ventricular ejection fraction", "心房颤动，左室射血分数降低"):
        result = _run(capsys, "retrieve", "--index", world / "index", query, "--k", "5")
        hits = result["hits"]
        with torch.inference_mode():
            q = model.encode_query([query])[0].numpy()
        expected = np.argsort(-(vectors @ q), kind="stable")[:5]
        assert [h["study_id"] for h in hits] == list(meta["study_id"].iloc[expected])
        np.testing.assert_allclose([h["score"] for h in hits], (vectors @ q)[expected], atol=1e-4)
        assert all(h["summary"] and h["summary"] in meta.set_index("study_id").loc[h["study_id"], "report"]
                   for h in hits)
    ecg_ids = store.select("ecg")[1]["study_id"]
    echo_ids = set(store.select("echo")[1]["study_id"])
    query_id = next(s for s in ecg_ids if s in echo_ids)
    like = _run(capsys, "retrieve", "--index", world / "index", "--like", query_id, "--from", "ecg",
                "--modality", "echo", "--k", "4")
    assert len(like["hits"]) == 4
    assert all(h["modality"] == "echo" and h["study_id"] in echo_ids and h["study_id"] != query_id
               for h in like["hits"])
    no_echo = next(s for s in store.select("study")[1]["study_id"] if s not in echo_ids)
    code = main(["retrieve", "--index", str(world / "index"), "--like", no_echo, "--from", "echo", "--json"])
    assert code == 2 and f"study {no_echo!r} has no 'echo' embedding" in json.loads(capsys.readouterr().out)["error"]


def test_zeroshot_writes_metrics_report_and_plots(world, store, capsys):
    out = world / "zs"
    metrics = _run(capsys, "zeroshot", "--model", world / "model", "--manifest", world / "cohort" / "manifest.csv",
                   "--out", out, "--store", world / "store", "--split", "all", "--bootstrap", "50")
    saved = json.loads((out / "metrics.json").read_text())
    assert json.dumps(saved["summary"], sort_keys=True) == json.dumps(metrics["summary"], sort_keys=True)
    assert saved["n_studies"] == N_STUDIES
    rows = saved["classification"]
    assert {r["lang"] for r in rows} == {"en", "zh"} and rows
    assert saved["prompts"] == default_prompts().to_dict()

    # every row's AUROC is scikit-learn's and its ECE the hand-computed one, on the scores of
    # the same heads (classify on the same store, model and prompts)
    model = create_model(world / "model").eval()
    ctx = EvalContext(store, "all", numpy_encoder(model.encode_text), saved["logit_scale"], default_prompts(),
                      n_bootstrap=50)
    ctx.build_heads()
    scored = {(c.lang, c.finding, c.modality): c for lang in LANGUAGES for c in classify(ctx, lang)[1]}
    assert set(scored) == {(r["lang"], r["finding"], r["modality"]) for r in rows}
    for r in rows:
        curve = scored[(r["lang"], r["finding"], r["modality"])]
        assert r["n"] == curve.y.size and r["n_pos"] == curve.y.sum()
        assert r["auroc"]["value"] == pytest.approx(roc_auc_score(curve.y, curve.prob), abs=1e-9)
        assert r["ece"] == pytest.approx(_ece(curve.y, curve.prob, saved["ece_bins"]), abs=1e-6)
        assert r["auroc"]["lo"] <= r["auroc"]["value"] <= r["auroc"]["hi"]
        assert r["modality"] == "study" or r["modality"] in FINDINGS[r["finding"]].modalities

    # one classification row and one regression row recomputed from the store and the model
    row = next(r for r in rows if r["lang"] == "en" and r["modality"] == "study")
    vectors, meta = store.select("study")
    labels = [labels_of(m).get(row["finding"]) for _, m in meta.iterrows()]
    keep = [i for i, v in enumerate(labels) if v is not None]
    logits = saved["logit_scale"] * vectors[keep] @ _direct_classes(model, FINDINGS[row["finding"]].classes("en")).T
    prob = torch.from_numpy(logits).softmax(-1)[:, 0].numpy()
    assert row["auroc"]["value"] == pytest.approx(roc_auc_score([labels[i] for i in keep], prob), abs=1e-6)

    ef = next(r for r in saved["regression"] if r["lang"] == "zh" and r["modality"] == "echo")
    vectors, meta = store.select("echo")
    lvef = [json.loads(m).get("lvef") for m in meta["measurements"]]
    true = np.array([v for v in lvef if v is not None])
    vectors = vectors[[v is not None for v in lvef]]
    logits = saved["logit_scale"] * vectors @ _direct_classes(model, VALUES["lvef"].classes("zh")).T
    pred = torch.from_numpy(logits).softmax(-1).numpy() @ np.array(VALUES["lvef"].grid)
    assert ef["n"] == len(true) and ef["mae"] == pytest.approx(np.abs(pred - true).mean(), rel=1e-4)

    # report -> study retrieval by brute force: the rank of each study's own report's study
    text, text_meta = store.select("text")
    vectors, meta = store.select("study")
    text = text[text_meta.reset_index().set_index("study_id").loc[meta["study_id"], "index"].to_numpy()]
    ranks = _exact_ranks(text @ vectors.T)
    study = saved["retrieval"]["study"]["text_to_study"]
    assert study["n_queries"] == N_STUDIES
    assert (study["R@1"], study["R@10"]) == (pytest.approx(np.mean(ranks <= 1)), pytest.approx(np.mean(ranks <= 10)))
    assert study["MRR"] == pytest.approx(np.mean(1 / ranks))

    # Chinese vs English: each study's report and its translation from the manifest as queries
    lang = saved["language"]
    by_id = {s.study_id: s for s in read_manifest(world / "cohort" / "manifest.csv")}
    assert lang["n_pairs"] == N_STUDIES
    for code in LANGUAGES:
        with torch.inference_mode():
            queries = model.encode_text([by_id[sid].in_language(code).report for sid in meta["study_id"]]).numpy()
        assert lang[code]["MRR"] == pytest.approx(np.mean(1 / _exact_ranks(queries @ vectors.T)), rel=1e-5)
    assert lang["mrr_gap"] == pytest.approx(lang["zh"]["MRR"] - lang["en"]["MRR"])

    # every finding query recomputed by brute force, as search queries (centred): share of
    # the top min(10, R) with the finding; uncentred text embeddings would rank otherwise
    assert model.query_center.norm() > 0.1
    uncentred = []
    for query in saved["finding_queries"]:
        vectors, meta = store.select(query["modality"])
        labels = np.array([labels_of(m).get(query["finding"], -1) for _, m in meta.iterrows()])
        vectors, has = vectors[labels >= 0], labels[labels >= 0] == 1
        depth = min(10, int(has.sum()))
        phrasings = list(FINDINGS[query["finding"]].positive[query["lang"]])
        with torch.inference_mode():
            centred, plain = model.encode_query(phrasings).numpy(), model.encode_text(phrasings).numpy()
        shares = [[has[np.argsort(-(vectors @ q), kind="stable")[:depth]].mean() for q in qs]
                  for qs in (centred, plain)]
        assert query["n_relevant"] == has.sum() and query["precision_at_10"] == pytest.approx(np.mean(shares[0]))
        uncentred.append(np.mean(shares[1]))
    assert uncentred != pytest.approx([q["precision_at_10"] for q in saved["finding_queries"]])
    summary = saved["summary"]["retrieval"]
    assert summary["zh_en_gap"] == pytest.approx(summary["precision_at_10_zh"] - summary["precision_at_10"])

    report = (out / "report.md").read_text()
    for heading in ("## Zero-shot classification", "## Regression", "## Retrieval", "## Subgroups"):
        assert heading in report
    pngs = [*saved["plots"]["roc"].values(), *saved["plots"]["values"].values(), saved["plots"]["ranks"]]
    assert len(pngs) >= 3
    for name in pngs:
        assert f"({name})" in report
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100


def _ece(y: np.ndarray, prob: np.ndarray, n_bins: int) -> float:
    """Expected calibration error by hand: equal-width bins, |mean probability - positive
    rate| weighted by the bin's share of the studies."""
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    return sum(np.mean(bins == b) * abs(prob[bins == b].mean() - y[bins == b].mean()) for b in np.unique(bins))


def _exact_ranks(similarity: np.ndarray) -> np.ndarray:
    """1-based rank of the diagonal candidate in each row (ties: the candidate comes first)."""
    return 1 + (similarity > np.diag(similarity)[:, None]).sum(axis=1)


def _direct_classes(model, classes: list[list[str]]) -> np.ndarray:
    """Per class: mean of the unit prompt embeddings, renormalised, one prompt list at a time."""
    with torch.inference_mode():
        means = [torch.nn.functional.normalize(model.encode_text(p), dim=-1).mean(0) for p in classes]
    return torch.nn.functional.normalize(torch.stack(means), dim=-1).numpy()


def test_prompt_registry_agrees_with_the_phantom_labels():
    assert {name: f.modalities for name, f in FINDINGS.items()} == SHOWN_BY


def test_linear_probe_precision_is_its_ranking_of_the_held_out_studies(store):
    ctx = EvalContext(store, "test", encode_text=None, logit_scale=1.0, prompts=default_prompts(), n_bootstrap=20)
    rows = linear_probe(ctx)
    assert rows
    for row in rows:
        x_tr, y_tr, _ = labelled(*store.select(row["modality"], split="train"), row["finding"])
        x_te, y_te, _ = labelled(*store.select(row["modality"], split="test"), row["finding"])
        score = LogisticRegression(max_iter=1000, class_weight="balanced").fit(x_tr, y_tr).predict_proba(x_te)[:, 1]
        depth = min(10, int(y_te.sum()))
        top = np.argsort(-score, kind="stable")[:depth]
        assert row["precision_at_10"] == pytest.approx(y_te[top].mean())
        assert row["auroc"]["value"] == pytest.approx(roc_auc_score(y_te, score))


def test_a_prompt_file_sets_what_is_evaluated(world, store, tmp_path, capsys):
    """One finding and no value prompts in the file: only that finding is classified and
    queried, nothing is regressed, and metrics.json records the set used."""
    afib = {"findings": {"afib": default_prompts().to_dict()["findings"]["afib"]}}
    (tmp_path / "prompts.yaml").write_text(dump_yaml(afib), encoding="utf-8")
    metrics = _run(capsys, "zeroshot", "--model", world / "model", "--manifest", world / "cohort" / "manifest.csv",
                   "--out", tmp_path / "zs", "--store", world / "store", "--split", "all", "--bootstrap", "20",
                   "--prompts", tmp_path / "prompts.yaml")
    assert {(r["finding"], r["modality"]) for r in metrics["classification"]} == {("afib", "ecg"), ("afib", "study")}
    assert {r["finding"] for r in metrics["finding_queries"]} == {"afib"}
    assert metrics["regression"] == [] and metrics["summary"]["zeroshot"]["ef_mae_by_modality"] == {}
    assert prompts_from_dict(metrics["prompts"]) == prompts_from_dict(afib)
    assert "zero-shot macro AUROC, ecg: afib (EN prompts)" in (tmp_path / "zs" / "report.md").read_text()


def test_a_bad_prompt_file_is_refused_naming_file_and_field_before_any_work(world, tmp_path, capsys):
    prompts = default_prompts().to_dict()
    prompts["findings"]["afib"]["positive"].pop("zh")
    (tmp_path / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    code = main(["zeroshot", "--model", str(world / "model"), "--manifest", str(world / "cohort" / "manifest.csv"),
                 "--out", str(tmp_path / "zs"), "--prompts", str(tmp_path / "prompts.json"), "--json"])
    error = json.loads(capsys.readouterr().out)
    assert code == 2 and (error["file"], error["field"]) == (str(tmp_path / "prompts.json"), "findings.afib.positive")
    assert "['en', 'zh']" in error["error"] and not (tmp_path / "zs").exists()


def test_the_default_prompt_set_round_trips_through_its_file_form():
    assert prompts_from_dict(load_yaml(dump_yaml(default_prompts().to_dict()))) == default_prompts()


def test_a_lead_subset_embeds_as_another_model_with_the_other_leads_masked(world, store, tmp_path, capsys):
    manifest = world / "cohort" / "manifest.csv"
    summary = _run(capsys, "embed", "--model", world / "model", "--manifest", manifest,
                   "--out", tmp_path / "lead_I", "--ecg-leads", "I")
    lead_i = EmbeddingStore.load(tmp_path / "lead_I")
    assert lead_i.model["ecg_leads"] == ["I"] and summary["fingerprint"] != store.model["fingerprint"]
    model = create_model(world / "model").eval()
    study = read_manifest(manifest)[0]
    inputs = CardioProcessor.from_model(model)(study)["ecg"]
    assert bool(inputs["lead_mask"].all())
    only_i = {"signal": inputs["signal"][None], "lead_mask": torch.zeros(1, 12, dtype=torch.bool)}
    only_i["lead_mask"][0, 0] = True
    with torch.inference_mode():
        expected = model.encode("ecg", only_i)[0].numpy()
    got, _ = lead_i.select("ecg", study_ids=[study.study_id])
    np.testing.assert_allclose(got[0], expected, atol=1e-4)
    twelve, _ = store.select("ecg", study_ids=[study.study_id])
    assert float(got[0] @ twelve[0]) < 0.9999  # the tower saw less
    assert main(["embed", "--model", str(world / "model"), "--manifest", str(manifest),
                 "--out", str(world / "store"), "--ecg-leads", "I"]) == 2  # a 12-lead store is refused
    assert "cannot be mixed" in capsys.readouterr().err


def test_a_long_recording_embeds_window_by_window(world, tmp_path, capsys):
    import wfdb

    from mmcardio.datasets.readers.ecg import read_ecg
    from mmcardio.datasets.transforms import crop_or_pad, prepare_ecg
    from mmcardio.retrieval.recording import RecordingEmbeddings

    t = np.arange(65 * 360) / 360
    signal = np.stack([np.exp(-((t % 0.8) - 0.3) ** 2 / 2e-4), 0.5 * np.sin(2 * np.pi * t)], axis=1)
    wfdb.wrsamp("rec", fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=signal,
                fmt=["212", "212"], adc_gain=[200.0, 200.0], baseline=[1024, 1024], write_dir=str(tmp_path))
    summary = _run(capsys, "embed", "--model", world / "model", "--recording", tmp_path / "rec.hea",
                   "--out", tmp_path / "rec.npz", "--window-s", 10)
    assert summary["windows"] == 7 and summary["lead_origin"] == {"II": "modified", "V1": "measured"}
    embedded = RecordingEmbeddings.load(tmp_path / "rec.npz")
    np.testing.assert_allclose(embedded.start_s, [0, 10, 20, 30, 40, 50, 55])
    model = create_model(world / "model").eval()
    cfg = CardioProcessor.from_model(model).preprocess.ecg
    window = prepare_ecg(read_ecg(tmp_path / "rec.hea", start_s=55.0, duration_s=10.0), cfg)
    with torch.inference_mode():
        expected = model.encode("ecg", {"signal": crop_or_pad(window["signal"], cfg.samples)[None],
                                        "lead_mask": window["lead_mask"][None]})[0].numpy()
    np.testing.assert_allclose(embedded.vectors[-1], expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(embedded.vectors, axis=1), 1.0, atol=1e-5)
    assert abs(float(np.linalg.norm(embedded.mean())) - 1.0) < 1e-6
