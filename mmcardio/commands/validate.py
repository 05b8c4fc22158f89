"""`mmcardio validate MANIFEST`: list every problem of every row and file."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit
from mmcardio.validation import validate_manifest


def register(sub) -> None:
    p = sub.add_parser(
        "validate", help="check a manifest: every row, every column, every file",
        description="Check every row of a study manifest (CSV, Parquet or JSONL) and read every "
                    "file it points to. Lists all problems (row, column, file, what was expected) "
                    "without stopping at the first. Exit code 0 only when the manifest is clean. "
                    "Every command that reads a manifest applies the same row checks and stops at "
                    "the first bad row.",
    )
    p.add_argument("manifest", help="manifest file (.csv, .parquet or .jsonl)")
    p.add_argument("--no-read", action="store_true", help="check that files exist, but do not decode them")
    p.add_argument("--workers", type=int, default=None, help="processes decoding files (default: one per CPU)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    problems = validate_manifest(args.manifest, read_files=not args.no_read, progress=not args.json,
                                 workers=args.workers)
    result = {"manifest": args.manifest, "ok": not problems, "problems": [vars(p) for p in problems]}
    lines = [str(p) for p in problems] or [f"{args.manifest}: OK"]
    emit(result, args.json, "\n".join(lines))
    return 1 if problems else 0
