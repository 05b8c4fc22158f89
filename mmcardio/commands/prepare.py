"""`mmcardio prepare --manifest M --out OUT`: a de-identified copy of the cohort, then a cache
of every study decoded once."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmcardio.cli import add_json_flag, emit
from mmcardio.errors import MMCardioError

DESCRIPTION = """\
Read every study of a manifest, de-identify it, and decode it once into a training cache.

De-identification (the default) writes into OUT:
  OUT/manifest.<format>   study_id and patient_id replaced by pseudonyms ("s-"/"p-" + 16 hex of
                          HMAC-SHA256 with your secret key); columns outside the study schema
                          (MRN, names, dates...) dropped; ages above 89 written as 90; the
                          study's known names and ids, and dates, replaced in report text
  OUT/files/<study>/      copies of the files, renamed, without identifiers:
                          DICOM: PS3.15 basic profile (names, ids, birth dates, addresses,
                            institution, accession numbers, dates, descriptions, private tags),
                            UIDs replaced by keyed hashes (a series stays one series); echo
                            pixels outside the ultrasound regions blanked (burned-in names), a
                            study with burned-in text that cannot be located refused
                          ECG XML (MUSE, CardioSoft, aECG): patient, order, site, date and
                            statement blocks emptied; WFDB: header comments and base date
                            dropped, record renamed; EDF: patient/recording fields anonymised
                          NIfTI: descrip, aux_file, db_name, intent_name, extensions cleared;
                            MetaImage: non-geometry keys dropped; MP4/AVI: remuxed without metadata
  OUT/prepare.json        counts, failed studies (by pseudonym), the key's id (not the key)
Then the cache (OUT/studies/*.safetensors, OUT/index.json, OUT/preprocess.json) is made from
OUT/manifest.*: run every later command (pretrain, embed, zeroshot, ...) on OUT/manifest.*.

The key: --deid-key FILE, else $MMCARDIO_DEID_KEY_FILE, else ~/.config/mmcardio/deid.key (made
with 32 random bytes, mode 0600, on first use). The same key gives the same pseudonyms, so a
grown manifest reuses the work done. The key is never written into OUT, and may not lie in it:
record numbers are short, so anyone holding the key re-identifies them by hashing every number.
The original -> pseudonym table is not written either, unless you ask (--mapping FILE, outside OUT).
Not removed: identifiers in report text that no header or id column states (a name typed only
in the text), and identifiers inside pixels of non-ultrasound images marked as clean.

With --no-deidentify, the files are cached as they are (data already de-identified).
Studies that fail (to de-identify or to decode) are listed by pseudonym (exit code 1).
"""


def register(sub) -> None:
    p = sub.add_parser(
        "prepare", help="de-identify a cohort and decode every study once into a training cache",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mmcardio prepare --manifest cohort/manifest.csv --out prepared/tiny "
               "--config configs/pretrain/tiny.yaml\n"
               "  mmcardio pretrain --config configs/pretrain/tiny.yaml --manifest prepared/tiny/manifest.csv "
               "--cache prepared/tiny --out runs/tiny",
    )
    p.add_argument("--manifest", required=True, help="study manifest (.csv, .parquet or .jsonl)")
    p.add_argument("--out", required=True, help="output folder: de-identified cohort and cache (created or extended)")
    p.add_argument("--config", help="run config whose model sets the preprocessing "
                                    "(default: the built-in defaults, model cardioclip-tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config key, e.g. --set preprocess.ecg.notch_hz=50")
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes (default 0: in this process)")
    p.add_argument("--no-deidentify", dest="deidentify", action="store_false",
                   help="cache the files as they are, without a de-identified copy (data already de-identified)")
    p.add_argument("--deid-key", metavar="FILE",
                   help="secret key file for the pseudonyms (default: $MMCARDIO_DEID_KEY_FILE, else "
                        "~/.config/mmcardio/deid.key, created on first use); never inside OUT")
    p.add_argument("--mapping", metavar="FILE",
                   help="also write the original -> pseudonym table (CSV, mode 0600) here; never inside OUT")
    p.add_argument("--keep-burned-in", action="store_true",
                   help="copy pixels that may show burned-in identifiers (ultrasound without regions, "
                        "BurnedInAnnotation YES) as they are, instead of refusing those studies")
    add_json_flag(p)
    p.set_defaults(func=run)


def _outside(path: Path, out: Path, option: str) -> Path:
    if path.expanduser().resolve().is_relative_to(out.resolve()):
        raise MMCardioError(f"{option} must lie outside the output folder {out}: whoever gets the outputs "
                            "must not get this file with them", path, option)
    return path.expanduser()


def run(args) -> int:
    from mmcardio.datasets.cache import prepare_cache
    from mmcardio.processor import CardioProcessor
    from mmcardio.train.config import load_pretrain_config, run_preprocess

    cfg = load_pretrain_config(args.config, args.overrides)
    out = Path(args.out)
    manifest, deid = Path(args.manifest), None
    if args.deidentify:
        manifest, deid = _deidentify(args, out)
    result = prepare_cache(manifest, out, CardioProcessor(run_preprocess(cfg)),
                           progress=not args.json, num_workers=args.workers)
    if deid is not None:
        result = {**result, "manifest": str(manifest), "deidentification": deid,
                  "failed": {**deid["failed"], **result["failed"]}}
    head = (f"{args.out}: {result['prepared']} prepared, {result['reused']} reused, "
            f"{len(result['failed'])} failed of {result['studies']} studies in {result['seconds']} s")
    lines = [head]
    if deid is not None:
        lines.append(f"  de-identified: {deid['deidentified']} written, {deid['reused']} reused, "
                     f"{len(deid['failed'])} refused; {deid['pseudonyms']} pseudonyms (key {deid['key_id']}); "
                     f"run the next commands on {manifest}")
    lines += [f"  {study_id}: {problem}" for study_id, problem in result["failed"].items()]
    emit(result, args.json, "\n".join(lines))
    return 1 if result["failed"] else 0


def _deidentify(args, out: Path) -> tuple[Path, dict]:
    """The de-identified copy in OUT; returns its manifest and summary (without the mapping)."""
    from mmcardio.deid import default_key_file, deidentify_cohort, load_key, write_mapping
    from mmcardio.study import read_manifest

    read_manifest(args.manifest)  # a bad manifest is refused before a key is made for it
    key_file = _outside(Path(args.deid_key) if args.deid_key else default_key_file(), out, "--deid-key")
    mapping_file = _outside(Path(args.mapping), out, "--mapping") if args.mapping else None
    key, key_path = load_key(key_file)
    summary = deidentify_cohort(args.manifest, out, key, keep_burned_in=args.keep_burned_in,
                                progress=not args.json)
    mapping = summary.pop("mapping")
    if mapping_file is not None:
        summary["mapping_file"] = str(write_mapping(mapping_file, mapping))
    summary.update(pseudonyms=len(mapping), key_file=str(key_path))
    return Path(summary["manifest"]), summary
