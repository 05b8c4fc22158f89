"""`mmcardio retrieve`: find studies by report text (English or Chinese) or by an example study."""
from __future__ import annotations

import argparse
from textwrap import dedent
from typing import TYPE_CHECKING

from mmcardio.cli import add_json_flag, emit
from mmcardio.errors import MMCardioError
from mmcardio.retrieval.keys import STORE_KEYS

if TYPE_CHECKING:
    from mmcardio.retrieval.index import Hit


def register(sub) -> None:
    p = sub.add_parser(
        "retrieve", help="search an index with report text or an example study",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=dedent("""\
            Search an index built by `mmcardio index`.

            With QUERY (report text in English or Chinese, e.g. "atrial fibrillation" or
            "左室射血分数降低") the model embeds the text as a search query (centred on the
            mean sentence of its training reports) and the chosen modality's embeddings are
            ranked by similarity to it. With --like STUDY_ID the stored embedding of that
            study is the query (its --from modality, default the fused study embedding): with
            --from ecg --modality echo it finds echo studies that look like this ECG. The query
            study itself is never returned."""),
        epilog=dedent("""\
            examples:
              mmcardio retrieve --index runs/demo/index "reduced ejection fraction" --k 5
              mmcardio retrieve --index runs/demo/index "心房颤动" --modality ecg
              mmcardio retrieve --index runs/demo/index --like S0003 --from ecg --modality echo --json"""),
    )
    p.add_argument("query", nargs="?", help="report text to search for (omit with --like)")
    p.add_argument("--index", required=True, help="index folder written by `mmcardio index`")
    p.add_argument("--model", help="CardioCLIP folder (default: the one recorded in the index; it must "
                                   "be the model that made the embeddings)")
    p.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--modality", default="study", choices=STORE_KEYS,
                   help="which embeddings to search (default study, the fused embedding)")
    p.add_argument("--like", metavar="STUDY_ID", help="query with this indexed study instead of text")
    p.add_argument("--from", dest="query_modality", default="study", choices=STORE_KEYS,
                   help="with --like: which of the study's embeddings is the query (default study)")
    add_json_flag(p)
    p.set_defaults(func=run)


def format_hits(hits: list[Hit]) -> str:
    """A plain-text table of hits for people."""
    if not hits:
        return "no results"
    width = max(len(h.study_id) for h in hits)
    lines = [f"{'rank':>4}  {'study':<{width}}  {'modality':<8}  {'score':>6}  report"]
    lines += [f"{h.rank:>4}  {h.study_id:<{width}}  {h.modality:<8}  {h.score:>6.3f}  {h.summary}" for h in hits]
    return "\n".join(lines)


def run(args) -> int:
    if bool(args.query) == bool(args.like):
        raise MMCardioError("give either a QUERY text or --like STUDY_ID (exactly one)", field="query")
    from mmcardio.retrieval.index import Retriever  # torch and FAISS: on use

    retriever = Retriever(args.index, args.model)
    if args.like:
        hits = retriever.search_like(args.like, args.k, args.modality, args.query_modality)
    else:
        hits = retriever.search_text(args.query, args.k, args.modality)
    query = {"like": args.like, "from": args.query_modality} if args.like else {"text": args.query}
    result = {"index": args.index, "modality": args.modality, "query": query,
              "hits": [h.as_dict() for h in hits]}
    emit(result, args.json, format_hits(hits))
    return 0
