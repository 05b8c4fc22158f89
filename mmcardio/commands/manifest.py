"""`mmcardio manifest FORMAT ROOT --out MANIFEST`: a study manifest from a public dataset."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit
from mmcardio.datasets.public import RECIPE_MODULES


def register(sub) -> None:
    p = sub.add_parser(
        "manifest", help="build a study manifest from a public dataset's folder (PTB-XL, EchoNet, ACDC, ...)",
        description="Read a public cardiology dataset in the layout its publisher distributes and "
                    "write a study manifest: one row per study with its files, patient-disjoint "
                    "splits (the dataset's official ones where it has them), finding labels, "
                    "reports and measurements where the dataset has them, and label maps "
                    "renumbered into mmcardio's labels (written to MANIFEST_files/ beside the "
                    "manifest). Nothing is downloaded: ROOT is your copy of the dataset. Check "
                    "the result with `mmcardio validate MANIFEST`. The command prints the "
                    "dataset's citation and licence. Formats: "
                    + ", ".join(sorted(RECIPE_MODULES)) + ".",
        epilog="example: mmcardio manifest ptbxl ~/data/ptb-xl-1.0.3 --out ptbxl.csv --option rate=100",
    )
    p.add_argument("format", metavar="FORMAT", choices=sorted(RECIPE_MODULES),
                   help="the dataset: " + ", ".join(sorted(RECIPE_MODULES)))
    p.add_argument("root", metavar="ROOT", help="the dataset's top folder, as downloaded and unpacked")
    p.add_argument("--out", required=True, help="manifest to write (.csv, .parquet or .jsonl)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option (repeatable), e.g. rate=100 for ptbxl's 100-Hz records; an unknown "
                        "key is refused with the dataset's options listed")
    p.add_argument("--limit", type=int, default=None, help="read only the first N studies (a quick try)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.datasets.public import build_manifest
    from mmcardio.errors import ManifestError

    options = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ManifestError(f"expected KEY=VALUE, got {item!r}", field="--option")
        options[key.strip()] = value.strip()
    summary = build_manifest(args.format, args.root, args.out, options, args.limit, progress=not args.json)
    splits = ", ".join(f"{split} {n} ({summary['patients_per_split'][split]} patients)"
                       for split, n in sorted(summary["splits"].items()))
    labels = ", ".join(f"{name} {c['positive']}/{c['labelled']}" for name, c in summary["labels"].items())
    text = (f"{summary['manifest']}: {summary['studies']} {summary['dataset']} studies of "
            f"{summary['patients']} patients; {splits}\nlabels (positive/labelled): {labels or 'none'}\n"
            f"reports {summary['with_report']}, masks {summary['with_masks']}, measurements "
            f"{summary['with_measurements']}\nnext: mmcardio validate {summary['manifest']}\n"
            f"cite: {summary['citation']}\nlicence: {summary['licence']}")
    emit(summary, args.json, text)
    return 0
