"""`mmcardio index`: build FAISS indexes over an embedding store."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit
from mmcardio.retrieval.keys import KINDS


def register(sub) -> None:
    p = sub.add_parser(
        "index", help="build FAISS indexes (one per modality) over an embedding store",
        description="Build one FAISS inner-product index per store key (ecg, echo, cmr, ct, study, "
                    "text) and save it with the metadata and the model fingerprint. Kinds: flat "
                    "(exact, IndexFlatIP; right up to about a million vectors), ivf (IndexIVFFlat, "
                    "k-means cells: nlist defaults to 4*sqrt(n) with at least 39 vectors per cell, "
                    "nprobe to nlist/4 — raise nprobe for recall, lower it for speed), hnsw "
                    "(IndexHNSWFlat graph: hnsw-m links per node, ef-search candidates per query). "
                    "Next step: `mmcardio retrieve --index INDEX \"QUERY\"`.",
        epilog="example: mmcardio index --store runs/demo/store --out runs/demo/index --kind hnsw",
    )
    p.add_argument("--store", required=True, help="store folder written by `mmcardio embed`")
    p.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    p.add_argument("--kind", choices=KINDS, default="flat", help="index type (default flat, exact)")
    p.add_argument("--nlist", type=int, help="ivf: number of cells (default from the collection size)")
    p.add_argument("--nprobe", type=int, help="ivf: cells visited per query (default nlist/4)")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node (default 32)")
    p.add_argument("--ef-search", type=int, default=64, help="hnsw: candidate list size per query (default 64)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.retrieval.index import build_index  # torch and FAISS: on use

    index = build_index(args.store, args.out, kind=args.kind, progress=not args.json,
                        nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m, ef_search=args.ef_search)
    result = {"index": args.out, "kind": args.kind, "counts": index.info["counts"],
              "ivf": index.info["ivf"], "model": index.model["model_path"],
              "fingerprint": index.model["fingerprint"]}
    counts = ", ".join(f"{k} {n}" for k, n in result["counts"].items())
    emit(result, args.json, f"{args.out}: {args.kind} index of {counts}")
    return 0
