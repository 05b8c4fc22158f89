"""`measure_study` and `mmcardio measure` on a small phantom cohort: evidence, NIfTI, PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmcardio.adapters.structural import measure_study, write_masks, write_overlays
from mmcardio.cli import main
from mmcardio.datasets.readers import read_volume
from mmcardio.datasets.synthetic.cohort import generate_cohort
from mmcardio.errors import MMCardioError
from mmcardio.study import Study, read_manifest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Seed 0: S00002 holds both apical views, CMR and CT; S00004 CMR and A4C only."""
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(out, 4, seed=0, progress=False, workers=1)
    truth = {r["study_id"]: r for r in map(json.loads, (out / "truth.jsonl").open())}
    return out, truth


def measure_json(cohort, study, capsys, *extra) -> dict:
    assert main(["measure", "--manifest", str(cohort / "manifest.csv"), "--study", study,
                 "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_measure_json_cites_evidence_and_writes_nifti_and_png(cohort, capsys, tmp_path):
    root, truth = cohort
    got = measure_json(root, "S00002", capsys, "--out", str(tmp_path), "--png")
    want, masks = truth["S00002"]["measurements"], truth["S00002"]["masks"]
    assert abs(got["measurements"]["cmr"]["lvef"]["value"] - want["cmr"]["lvef"]["value"]) <= 1.0
    echo = got["measurements"]["echo"]
    assert abs(echo["lvef"]["value"] - want["echo"]["lvef"]["value"]) <= 2.0
    assert echo["lvef"]["frames"] == {
        v: [masks[f"echo:{v}"]["ed_frame"], masks[f"echo:{v}"]["es_frame"]] for v in ("A4C", "A2C")
    }
    assert got["measurements"]["cmr"]["lvef"]["frames"] == {
        "cmr": [masks["cmr"]["ed_phase"], masks["cmr"]["es_phase"]]
    }
    assert 0 < echo["lvedv"]["confidence"] <= 1 and echo["lvedv"]["unit"] == "mL"
    ct = got["measurements"]["ct"]["agatston"]
    assert ct["value"] == pytest.approx(want["ct"]["agatston"]["value"], abs=1e-6)
    for key, path in got["files"].items():
        written = read_volume(path)
        original = read_volume(root / masks[key]["path"])
        assert written.units == "label" and np.array_equal(written.array, original.array)
        assert np.allclose(written.spacing_mm, original.spacing_mm)
    assert (tmp_path / "S00002_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_view_echo_falls_back_to_area_length(cohort):
    root, _ = cohort
    study = next(s for s in read_manifest(root / "manifest.csv") if s.study_id == "S00004")
    result = measure_study(study)
    assert result.measurements["echo"]["lvedv"].method == "area-length, A4C"
    assert result.measurements["echo"]["lvedv"].confidence is None
    assert set(result.to_json()["measurements"]) == {"echo", "cmr"}


def test_given_masks_replace_the_manifest_and_outputs_land_in_out_dir(cohort, tmp_path):
    root, _ = cohort
    study = next(s for s in read_manifest(root / "manifest.csv") if s.study_id == "S00002")
    cmr = read_volume(study.masks["cmr"])
    result = measure_study(study, {"cmr": cmr})
    assert list(result.measurements) == ["cmr"]
    assert set(write_masks(result, tmp_path)) == {"cmr"}
    assert write_overlays(result, tmp_path) == tmp_path / "S00002_overlay.png"


def test_overlay_panels_lie_on_the_study_images_at_the_measured_frames(cohort):
    from mmcardio.adapters.structural import _panels

    root, _ = cohort
    study = next(s for s in read_manifest(root / "manifest.csv") if s.study_id == "S00002")
    result = measure_study(study)
    cine = read_volume(study.cmr, modality="cmr").array
    ef = result.measurements["cmr"]["lvef"]
    (ed, es), z = ef.frames["cmr"], ef.slices[len(ef.slices) // 2]
    panels = {title: (labels, image) for title, labels, image in _panels(result, study)}
    for name, t in (("ED", ed), ("ES", es)):
        labels, image = panels[f"cmr {name} (frame {t})"]
        assert np.array_equal(image, cine[t, z]) and labels.shape == image.shape
    assert all(image is not None and image.shape == labels.shape for labels, image in panels.values())


def test_errors_name_the_file_and_field(cohort, capsys):
    root, _ = cohort
    manifest = str(root / "manifest.csv")
    assert main(["measure", "--manifest", manifest, "--study", "S09999", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)
    assert error["file"] == manifest and error["field"] == "study_id"
    with pytest.raises(MMCardioError, match="no masks") as info:
        measure_study(Study("S1", "P1"))
    assert info.value.field == "masks"
    with pytest.raises(MMCardioError, match="no CT image"):
        measure_study(Study("S1", "P1"), {"ct": read_volume(root / "masks" / "S00002_ct.nii.gz")})


def test_help_teaches_units_and_mask_sources(capsys):
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    text = capsys.readouterr().out
    assert all(word in text for word in ("mL", "Agatston", "masks", "--segmenter", "confidence"))
