"""`mmcardio embed`: embed every study of a manifest into an embedding store, or one long ECG
recording as a sequence of windows."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit
from mmcardio.commands.zeroshot import lead_list
from mmcardio.failures import DEFAULT_MAX_FAILED_FRACTION


def register(sub) -> None:
    p = sub.add_parser(
        "embed", help="embed a manifest's studies and reports into an embedding store, or a long ECG by windows",
        description="Run a trained CardioCLIP over every study of a manifest and store, per study, "
                    "one L2-normalised vector for each modality it holds (ecg, echo, cmr, ct), the "
                    "fused study embedding and the report text embedding, with metadata (patient, "
                    "split, views, report, labels) and the model's fingerprint. Re-running on a "
                    "grown manifest embeds only the new studies; a store made by another model is "
                    "refused. A study that cannot be read is logged with the reader's message, gets no "
                    "vector and is listed in STORE/skipped.json and the summary (skipped_studies); the "
                    "next run tries it again. More than --max-failed-fraction of the manifest's "
                    "studies failing stops the run and writes nothing. Under `accelerate launch -m mmcardio.cli embed ...` every process "
                    "embeds a shard. Next step: `mmcardio index --store STORE --out INDEX`. "
                    "With --recording instead of --manifest, a long ECG (a Holter in WFDB or EDF, "
                    "hours long; a wearable strip) is read one window at a time and each window "
                    "embedded: OUT is an .npz with one vector per window, its start time and the "
                    "recording's mean vector.",
        epilog="examples: mmcardio embed --model runs/demo/final --manifest cohort/manifest.csv "
               "--out runs/demo/store; mmcardio embed --model runs/demo/final --recording "
               "holter/100.hea --out holter-100.npz --window-s 10",
    )
    p.add_argument("--model", required=True, help="CardioCLIP folder (config.json + model.safetensors), "
                                                  "e.g. RUN/final from `mmcardio pretrain`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="study manifest (.csv, .parquet or .jsonl)")
    source.add_argument("--recording", help="one ECG file to embed window by window (WFDB, EDF, any ECG format)")
    p.add_argument("--out", required=True, help="store folder to create or extend (--manifest), or the .npz "
                                                "to write (--recording)")
    p.add_argument("--batch-size", type=int, default=8, help="studies (or windows) per forward pass (default 8)")
    p.add_argument("--cache", help="a `mmcardio prepare` folder made with the model's preprocessing: "
                                   "its studies are read from it instead of being decoded again")
    p.add_argument("--ecg-leads", type=lead_list, metavar="LEADS",
                   help="give the ECG tower only these leads, comma-separated (e.g. I); a store made "
                        "so holds another model's embeddings and is kept apart")
    p.add_argument("--max-failed-fraction", type=float, default=DEFAULT_MAX_FAILED_FRACTION, metavar="F",
                   help="--manifest: the share of the studies that may fail to read and be skipped "
                        f"(default {DEFAULT_MAX_FAILED_FRACTION:g}; 0 stops at the first, 1 never stops)")
    p.add_argument("--window-s", type=float, help="--recording: window length in s (default: the model's "
                                                  "ECG input length)")
    p.add_argument("--hop-s", type=float, help="--recording: step between windows in s (default: the window)")
    p.add_argument("--lead", dest="leads", action="append", default=[], metavar="CHANNEL=LEAD",
                   help="--recording: read a channel whose label names no lead as this lead, e.g. ECG1=II")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.recording:
        return run_recording(args)
    from mmcardio.retrieval.store import embed_manifest, launched_accelerator  # torch: on use

    summary = embed_manifest(args.model, args.manifest, args.out, args.batch_size,
                             progress=not args.json, accelerator=launched_accelerator(), cache=args.cache,
                             ecg_leads=args.ecg_leads, max_failed_fraction=args.max_failed_fraction)
    per_key = ", ".join(f"{k} {n}" for k, n in summary["per_key"].items())
    text = (f"{summary['store']}: {summary['new_studies']} new of {summary['studies']} studies embedded; "
            f"{summary['vectors']} vectors ({per_key}) in {summary['seconds']:.1f} s")
    text += "".join(f"\nskipped {study_id}: {reason}" for study_id, reason in summary["skipped_studies"].items())
    emit(summary, args.json, text)
    return 0


def run_recording(args) -> int:
    from mmcardio.datasets.readers.ecg_leads import parse_lead_map
    from mmcardio.retrieval.recording import embed_recording  # torch: on use

    embedded = embed_recording(args.model, args.recording, args.window_s, args.hop_s, args.batch_size,
                               parse_lead_map(args.leads, "--lead"), args.ecg_leads, progress=not args.json)
    embedded.save(args.out)
    summary = {"recording": embedded.source, "out": args.out, "windows": len(embedded.start_s),
               "window_s": embedded.window_s, "dim": int(embedded.vectors.shape[1]),
               "first_start_s": float(embedded.start_s[0]), "last_start_s": float(embedded.start_s[-1]),
               "lead_origin": embedded.lead_origin}
    text = (f"{args.out}: {summary['windows']} windows of {embedded.window_s:g} s from {embedded.source} "
            f"(starts {summary['first_start_s']:g}-{summary['last_start_s']:g} s), {summary['dim']}-d vectors")
    emit(summary, args.json, text)
    return 0
