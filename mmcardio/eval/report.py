"""Markdown report of a zero-shot evaluation (the human view of metrics.json)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcardio.eval.metrics import AGE_BANDS
from mmcardio.eval.prompts import prompts_from_dict
from mmcardio.io import write_text
from mmcardio.study import LANGUAGES

P_AT_10_DEFINITION = (
    "*P@10 consistent*: for each report query, the share of the top-10 retrieved studies (the "
    "exact match included) that have the same value as the query study on every finding the "
    "query study's labels state and the searched modality can show; a finding the retrieved "
    "study does not state counts as a mismatch; queries stating no such finding are left out.")
FINDING_QUERY_DEFINITION = (
    "Each positive phrasing of a finding (the prompt registry's, EN and ZH twins) ranks the "
    "split's studies by one embedding, embedded as a search query (centred on the mean "
    "training sentence, `CardioCLIP.encode_query`); P@10 is the share of the first min(10, R) retrieved "
    "that have the finding, R being the number of studies with it, averaged over phrasings. "
    "The linear probe's P@10 ranks by the logistic regression fitted on the train split's "
    "labels instead: what the embeddings allow, so a gap to it lies on the text side.")


def _num(value: Any, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def _ci(est: dict | None) -> str:
    if not est:
        return "–"
    return f"{_num(est['value'])} [{_num(est['lo'])}, {_num(est['hi'])}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows], ""]


def _summary(m: dict) -> list[str]:
    z, r = m["summary"]["zeroshot"], m["summary"]["retrieval"]
    prompts = prompts_from_dict(m["prompts"], "metrics.json")
    rows = [[f"zero-shot macro AUROC, {key}: {', '.join(prompts.headline_findings(key))} (EN prompts)", _num(v)]
            for key, v in z["macro_auroc"].items()]
    rows += [[f"zero-shot macro AUROC, {key}, every finding it shows", _num(v)]
             for key, v in z["macro_auroc_all"].items()]
    rows += [["mean zero-shot AUROC (EN prompts)", _num(z["mean_auroc"]["en"])],
             ["mean zero-shot AUROC (ZH prompts)", _num(z["mean_auroc"]["zh"])],
             ["ZH - EN mean AUROC", _num(z["zh_en_auroc_gap"])],
             ["expected calibration error (mean, EN)", _num(z["ece"])],
             ["largest subgroup AUROC gap", _num(z["subgroup_auroc_gap"])]]
    rows += [[f"LVEF MAE, {mod} (EN)", _num(v, 1)] for mod, v in z["ef_mae_by_modality"].items()]
    rows += [["report -> study R@1 / R@10", f"{_num(r.get('recall_at_1'))} / {_num(r.get('recall_at_10'))}"],
             ["report -> study MRR", _num(r.get("mrr"))],
             ["finding queries P@10, by the modality showing the finding (EN)", _num(r["precision_at_10"])],
             ["finding queries P@10 (ZH)", _num(r["precision_at_10_zh"])],
             ["ZH - EN finding-query P@10 (zh_en_gap)", _num(r["zh_en_gap"])],
             ["finding P@10 of the linear probes (what the embeddings allow)", _num(r["probe_precision_at_10"])],
             ["finding queries P@10, fused study embedding (EN)", _num(r["precision_at_10_study"])]]
    return ["## Summary", "", *_table(["metric", "value"], rows)]


def _probes(m: dict) -> dict[tuple[str, str], dict]:
    """The linear-probe rows by (finding, modality)."""
    return {(r["finding"], r["modality"]): r for r in m["linear_probe"]}


def _classification(m: dict) -> list[str]:
    by_key = {(r["lang"], r["finding"], r["modality"]): r for r in m["classification"]}
    probe = _probes(m)
    roc = m.get("plots", {}).get("roc", {})
    lines = ["## Zero-shot classification", "",
             (f"AUROC and AUPRC with 95% bootstrap CIs; ECE over {m['ece_bins']} equal-width "
              "bins; the linear probe is logistic regression on frozen train-split embeddings."),
             ""]
    modalities = list(dict.fromkeys(r["modality"] for r in m["classification"]))
    for modality in modalities:
        rows = []
        for (lang, finding, mod), r in by_key.items():
            if lang != "en" or mod != modality:
                continue
            zh = by_key.get(("zh", finding, mod))
            link = f"[ROC]({roc[finding]})" if finding in roc else ""
            rows.append([finding, f"{r['n']} ({r['n_pos']})", _ci(r["auroc"]), _ci(zh and zh["auroc"]),
                         _ci(r["auprc"]), _num(r["ece"]), _ci(probe.get((finding, mod), {}).get("auroc")),
                         link])
        lines += [f"### {modality}", "", *_table(
            ["finding", "n (pos)", "AUROC EN", "AUROC ZH", "AUPRC EN", "ECE EN", "linear probe AUROC",
             "plot"], rows)]
    if not m["linear_probe"]:
        lines += [("No linear probe: it trains on the train split and needs another evaluated "
                   "split with both classes."), ""]
    if m["skipped"]:
        skipped = sorted({f"{s['finding']}/{s['modality']} (n={s['n']})" for s in m["skipped"]})
        lines += ["Not evaluable (one class only in this split): " + ", ".join(skipped), ""]
    return lines


def _regression(m: dict) -> list[str]:
    rows = [[r["measurement"], r["modality"], r["lang"], r["n"], f"{_num(r['mae'], 2)} {r['unit']}",
             _num(r["pearson_r"])] for r in m["regression"]]
    lines = ["## Regression from value prompts", "",
             ("Softmax-weighted mean of the value grid by similarity to value prompts; each prompt "
              "states the value and its guideline grade (LVEF: ASE/EACVI 2015 bands), as reports "
              "do."), ""]
    lines += _table(["measurement", "modality", "prompts", "n", "MAE", "Pearson r"], rows)
    lines += [f"![{name}]({png})" for name, png in m.get("plots", {}).get("values", {}).items()]
    return lines + [""]


def _retrieval(m: dict) -> list[str]:
    rows = []
    for key, directions in m["retrieval"].items():
        for direction, r in directions.items():
            rows.append([key, direction.replace("_", " "), r["n_queries"], _num(r["R@1"]), _num(r["R@5"]),
                         _num(r["R@10"]), _num(r["MRR"]), _num(r["median_rank"], 1),
                         _num(r.get("P@10_consistent"))])
    lines = ["## Retrieval", "", *_table(
        ["modality", "direction", "queries", "R@1", "R@5", "R@10", "MRR", "median rank", "P@10 consistent"],
        rows), P_AT_10_DEFINITION, ""]
    if "ranks" in m.get("plots", {}):
        lines += [f"![retrieval ranks]({m['plots']['ranks']})", ""]
    by_query = {(q["lang"], q["finding"], q["modality"]): q for q in m["finding_queries"]}
    probe = _probes(m)
    rows = [[finding, key, f"{q['n_candidates']} ({q['n_relevant']})", _num(q["precision_at_10"]),
             _num(by_query.get(("zh", finding, key), {}).get("precision_at_10", math.nan)),
             _num(probe.get((finding, key), {}).get("precision_at_10", math.nan))]
            for (lang, finding, key), q in by_query.items() if lang == "en"]
    lines += ["### Finding queries", "", FINDING_QUERY_DEFINITION, "",
              *_table(["finding", "searched", "studies (with it)", "P@10 EN", "P@10 ZH", "linear probe P@10"], rows)]
    lang = m["language"]
    lines += ["### Chinese vs English report queries", "",
              (f"Each study's own report in both languages (the manifest's report and its "
               f"translation) as the query (exact match), over {lang['n_pairs']} studies."), ""]
    if "en" in lang:
        lines += _table(["queries", "R@1", "R@10", "MRR"],
                        [[code, _num(lang[code]["R@1"]), _num(lang[code]["R@10"]), _num(lang[code]["MRR"])]
                         for code in LANGUAGES])
        lines += [f"MRR ZH - EN: {_num(lang['mrr_gap'])}", ""]
    return lines


def _subgroups(m: dict) -> list[str]:
    rows = []
    for r in m["subgroups"]:
        sex = {g: _num(v["auroc"]) for g, v in r["sex"]["groups"].items()}
        age = {g: _num(v["auroc"]) for g, v in r["age"]["groups"].items()}
        rows.append([r["finding"], r["modality"], sex.get("F", "–"), sex.get("M", "–"),
                     *[age.get(b, "–") for b in AGE_BANDS], _num(r["largest_gap"])])
    return ["## Subgroups (zero-shot AUROC, EN prompts)", "",
            "Subgroups holding one class only are left out (–).", "",
            *_table(["finding", "modality", "F", "M", *AGE_BANDS, "largest gap"], rows)]


def render_report(m: dict) -> str:
    """The Markdown text of a metrics dict from `evaluate_zeroshot`."""
    model = m["model"]
    head = ["# Zero-shot evaluation", "",
            f"- model: `{model.get('model_path')}` (fingerprint `{model['fingerprint'][:12]}`)",
            f"- manifest: `{m['manifest']}`, split `{m['split']}`, {m['n_studies']} studies",
            (f"- logit scale {_num(m['logit_scale'], 2)}, {m['n_bootstrap']} bootstrap "
             f"resamples (seed {m['seed']})"), ""]
    body = _summary(m) + _classification(m) + _regression(m) + _retrieval(m) + _subgroups(m)
    return "\n".join(head + body) + "\n"


def write_report(metrics: dict, path: str | Path) -> Path:
    """Write report.md atomically next to the plots it links."""
    return write_text(path, render_report(metrics))
