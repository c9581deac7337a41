"""`--dicom`: seg.dcm (DICOM SEG) and sr.dcm (TID 1500) through the real command, validated and read back.

Each file is checked by the standard's validator `dciodvfy` (Debian's dicom3tools), read back with highdicom
(SEG -> exactly labels.nii.gz; SR -> exactly metrics.json's numbers) and inspected with pydicom (references
to the source images, identity copied, new UIDs). The source series is a small phantom CT written as real
DICOM files with a non-trivial orientation; the 350-slice Visible Human calf series runs the same checks
in the slow test. Bad inputs are in test_bad_inputs.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import writers as w

from LegSegNetLib.core import tissues
from LegSegNetLib.core.terminology import tissue_terms
from LegSegNetLib.measurement.dicom_results import DERIVED_CODES, PRIVATE_SCHEME

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
EMPTY_IN_SOURCE = "Missing attribute or value that would be needed to build DICOMDIR - Study"
REGION_IDS = {"whole": "both legs", "left": "left leg", "right": "right leg"}


# ---------------------------------------------------------------------------------------------- the validator
def _install_dicom3tools() -> str:
    """Try to install dicom3tools as `make test` does; return why it failed ('' when it worked)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "not running as root, so it cannot be installed here (install the Debian package dicom3tools)"
    if shutil.which("apt-get") is None:
        return "no apt-get on this system (dicom3tools is a Debian/Ubuntu package)"
    done = subprocess.run(
        ["sh", "-c", "apt-get update -qq && apt-get install -y -qq dicom3tools"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return "" if done.returncode == 0 else f"apt-get failed: {(done.stderr or done.stdout).strip()[-300:]}"


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    if shutil.which("dciodvfy") is None:
        why = _install_dicom3tools()
        if shutil.which("dciodvfy") is None:
            pytest.skip(f"dciodvfy (Debian package dicom3tools) is not installed and could not be installed: {why}")
    return shutil.which("dciodvfy")  # type: ignore[return-value]


def assert_valid_dicom(dciodvfy: str, path: Path, iod: str) -> list[str]:
    """dciodvfy finds the IOD and reports no error; returns its warnings (for the caller to judge)."""
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=300)
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy found errors in {path.name}:\n" + "\n".join(errors[:20])
    assert iod in lines, f"dciodvfy did not recognise {path.name} as {iod}: {lines[:5]}"
    return [line for line in lines if line.startswith("Warning")]


# ---------------------------------------------------------------------------------------------- SR reading
def _code(item) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.CodingSchemeDesignator), str(concept.CodeValue)


def measurement_groups(sr) -> dict[str, dict]:
    """{tracking identifier: {"segment": n, "values": {(scheme, code): value}, "sources": {(scheme, code): [n]}}}"""
    root = sr.ContentSequence
    imaging = next(item for item in root if _code(item) == ("DCM", "126010"))  # Imaging Measurements
    groups = {}
    for group in imaging.ContentSequence:
        assert _code(group) == ("DCM", "125007")  # Measurement Group
        entry: dict = {"segment": None, "values": {}, "sources": {}}
        for item in group.ContentSequence:
            if _code(item) == ("DCM", "112039"):  # Tracking Identifier
                name = str(item.TextValue)
            elif _code(item) == ("DCM", "121191"):  # Referenced Segment
                entry["segment"] = int(item.ReferencedSOPSequence[0].ReferencedSegmentNumber)
                entry["segment_of"] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            elif item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0]
                number = float(value.FloatingPointValue)
                assert float(value.NumericValue) == pytest.approx(number, rel=1e-9, abs=1e-12)  # a 16-character DS
                entry["values"][_code(item)] = number
                for child in item.get("ContentSequence", []):
                    if _code(child) == ("DCM", "121112"):  # Source of Measurement
                        ref = child.ReferencedSOPSequence[0]
                        entry["sources"][_code(item)] = sorted(
                            int(n) for n in np.atleast_1d(ref.ReferencedSegmentNumber)
                        )
        groups[name] = entry
    return groups


def assert_sr_equals_metrics(sr, metrics: dict, seg) -> None:
    """Every number of metrics.json (whole range and each leg) is in the SR, bit for bit, pointing at its segment."""
    groups = measurement_groups(sr)
    regions = {"whole": metrics, **metrics["legs"]}
    assert set(metrics["legs"]) == {"left", "right"}
    assert len(groups) == len(regions) * 5  # four tissues and the derived metrics per region
    for region, numbers in regions.items():
        for tissue in tissues.TISSUES:
            group = groups[f"{tissue.key}, {REGION_IDS[region]}"]
            stats = numbers["tissues"][tissue.key]
            assert group["segment"] == tissue.value and group["segment_of"] == seg.SOPInstanceUID
            expected = {
                ("SCT", "118565006"): stats["volume_cm3"],
                ("SCT", "373098007"): stats["mean_hu"],
                ("SCT", "386136009"): stats["sd_hu"],
            }
            assert group["values"] == {code: value for code, value in expected.items() if value is not None}
        derived = groups[f"Derived metrics, {REGION_IDS[region]}"]
        for key, (code, _, _, from_tissues) in DERIVED_CODES.items():
            assert derived["values"][(PRIVATE_SCHEME, code)] == numbers["derived"][key]
            assert derived["sources"][(PRIVATE_SCHEME, code)] == sorted(
                tissues.TISSUE_BY_KEY[k].value for k in from_tissues
            )


# ---------------------------------------------------------------------------------------------- shared checks
def seg_labels_by_source(seg_path: Path, uids: list[str]) -> np.ndarray:
    """The SEG decoded by highdicom alone: a label value (= segment number) per pixel of each source instance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.segread(seg_path)
        return seg.get_pixels_by_source_instance(
            uids, combine_segments=True, relabel=False, assert_missing_frames_are_empty=True
        )


def source_headers(folder: Path) -> list:
    """The series' headers sorted along the slice normal, as volume_io stores the slices."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()) if p.suffix == ".dcm"]
    normal = np.cross(*np.reshape(np.array(headers[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(headers, key=lambda h: float(np.dot(np.array(h.ImagePositionPatient, float), normal)))


def assert_references_source(seg, sr, headers: list, first: int, last: int) -> None:
    analysed = {str(h.SOPInstanceUID) for h in headers[first : last + 1]}
    source = headers[0]
    # SEG: the source series, exactly the analysed instances, each frame its own source image, same frame of reference.
    (series_ref,) = seg.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == source.SeriesInstanceUID
    assert {str(r.ReferencedSOPInstanceUID) for r in series_ref.ReferencedInstanceSequence} == analysed
    position_of = {str(h.SOPInstanceUID): [float(v) for v in h.ImagePositionPatient] for h in headers}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = frame.DerivationImageSequence
        (image,) = derivation.SourceImageSequence
        uid = str(image.ReferencedSOPInstanceUID)
        assert uid in analysed
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, position_of[uid], atol=1e-4)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    # SR: the SEG and the analysed source images are its evidence.
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    evidence_uids = {
        str(r.ReferencedSOPInstanceUID) for s in evidence.ReferencedSeriesSequence for r in s.ReferencedSOPSequence
    }
    assert evidence_uids == analysed | {seg.SOPInstanceUID}
    # Identity copied; new UIDs for the new objects.
    for ds in (seg, sr):
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID"):
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID not in position_of
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID and seg.SOPInstanceUID != sr.SOPInstanceUID


def assert_seg_equals_labels_file(seg_path: Path, labels_path: Path, headers: list, first: int, last: int) -> None:
    uids = [str(h.SOPInstanceUID) for h in headers]
    decoded = seg_labels_by_source(seg_path, uids[first : last + 1])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))  # (k, j, i): slice k is instance k
    assert decoded.shape == labels[first : last + 1].shape
    for k in range(first, last + 1):  # segment number = label value: no mapping needed
        assert np.array_equal(decoded[k - first], labels[k]), f"slice {k} differs"
    assert not labels[:first].any() and not labels[last + 1 :].any()


def file_digests(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
    }


# ---------------------------------------------------------------------------------------------- phantom series
@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory) -> Path:
    ct, _ = w.phantom_image()
    folder = tmp_path_factory.mktemp("dicom") / "series"
    w.write_dicom_series(ct, folder, shuffle_names=True)
    return folder


def _run_dicom(series: Path, out: Path, *extra: str) -> dict:
    before = file_digests(series)
    engine = [] if "--engine" in extra else ["--engine", "threshold"]
    done = w.run_legsegnet("segment", series, "-o", out, *engine, "--dicom", "--quiet", *extra)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "a successful run prints no warnings"
    assert file_digests(series) == before, "the source files were touched"
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def whole_run(phantom_series, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    return out, _run_dicom(phantom_series, out)


@pytest.fixture(scope="module")
def partial_run(phantom_series, tmp_path_factory):
    out = tmp_path_factory.mktemp("partial") / "out"
    return out, _run_dicom(phantom_series, out, "--slices", "2:5")


def test_seg_and_sr_pass_the_dicom_validator(whole_run, partial_run, dciodvfy):
    for out, _ in (whole_run, partial_run):
        seg_warnings = assert_valid_dicom(dciodvfy, out / "seg.dcm", "Segmentation")
        sr_warnings = assert_valid_dicom(dciodvfy, out / "sr.dcm", "Comprehensive3DSR")
        # Remarks allowed: study attributes the source leaves empty (copied as they are; the test series has no
        # study date, time or ID) and, in the SR, the private coding scheme of the derived metrics.
        assert all(EMPTY_IN_SOURCE in line for line in seg_warnings), seg_warnings
        assert all(EMPTY_IN_SOURCE in line or PRIVATE_SCHEME in line for line in sr_warnings), sr_warnings
        assert any(PRIVATE_SCHEME in line for line in sr_warnings)  # the validator did read the SR's codes


@pytest.mark.parametrize("run_name, first, last", [("whole_run", 0, 7), ("partial_run", 2, 5)])
def test_seg_reads_back_as_labels_nii_on_every_analysed_slice(request, phantom_series, run_name, first, last):
    out, metrics = request.getfixturevalue(run_name)
    assert metrics["slices"] == [first, last]
    headers = source_headers(phantom_series)
    assert_seg_equals_labels_file(out / "seg.dcm", out / "labels.nii.gz", headers, first, last)
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.SegmentationType == "BINARY"
    assert_references_source(seg, pydicom.dcmread(out / "sr.dcm"), headers, first, last)


def test_segments_carry_the_terminology_files_names_codes_and_colours(whole_run):
    out, metrics = whole_run
    seg = pydicom.dcmread(out / "seg.dcm")
    terms = tissue_terms()
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [t.value for t in tissues.TISSUES]
    for segment, tissue in zip(seg.SegmentSequence, tissues.TISSUES):
        term = terms[tissue.key]
        assert segment.SegmentLabel == tissue.key
        assert _concept(segment.SegmentedPropertyCategoryCodeSequence[0]) == (term.category.scheme, term.category.value)
        assert _concept(segment.SegmentedPropertyTypeCodeSequence[0]) == (term.type.scheme, term.type.value)
        assert term.type.scheme == "SCT"
        rgb = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, term.rgb, atol=1), (tissue.key, rgb, term.rgb)
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "LegSegNet" and algorithm.AlgorithmVersion == metrics["legsegnet_version"]
        parameters = dict(p.split("=", 1) for p in algorithm.AlgorithmParameters.split(","))
        assert parameters == {"engine": "threshold", "model": "none", "round": "none"}


def _concept(code) -> tuple[str, str]:
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


@pytest.mark.parametrize("run_name", ["whole_run", "partial_run"])
def test_sr_values_equal_metrics_json_and_point_to_their_segments(request, run_name):
    out, metrics = request.getfixturevalue(run_name)
    seg, sr = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "sr.dcm")
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert _code(sr) == ("DCM", "126000")  # Imaging Measurement Report
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert_sr_equals_metrics(sr, metrics, seg)
    observer = {(_code(i)): i for i in sr.ContentSequence if i.RelationshipType == "HAS OBS CONTEXT"}
    assert str(observer[("DCM", "121013")].TextValue) == "LegSegNet"  # Device Observer Name


def test_quantify_measures_the_seg_as_the_label_map(whole_run, phantom_series, tmp_path):
    out, metrics = whole_run
    done = w.run_legsegnet("quantify", phantom_series, out / "seg.dcm", "-o", tmp_path / "q", "--quiet")
    assert done.returncode == 0, done.stderr
    again = json.loads((tmp_path / "q" / "metrics.json").read_text())
    for key in ("slices", "tissues", "derived", "legs"):
        assert again[key] == metrics[key], key
    reread = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "q" / "labels.nii.gz")))
    assert np.array_equal(reread, sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz"))))


def test_quantify_with_dicom_reports_corrected_labels(whole_run, phantom_series, tmp_path, dciodvfy):
    out, _ = whole_run
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    edited = sitk.GetArrayFromImage(labels)
    edited[3][edited[3] == tissues.IAT] = tissues.SM  # a "correction": IAT of slice 3 is muscle
    corrected = sitk.GetImageFromArray(edited)
    corrected.CopyInformation(labels)
    w.write_image(corrected, tmp_path / "corrected.nii.gz")
    done = w.run_legsegnet(
        "quantify", phantom_series, tmp_path / "corrected.nii.gz", "-o", tmp_path / "q", "--dicom", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "q" / "metrics.json").read_text())
    seg, sr = pydicom.dcmread(tmp_path / "q" / "seg.dcm"), pydicom.dcmread(tmp_path / "q" / "sr.dcm")
    assert_sr_equals_metrics(sr, metrics, seg)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "engine=external" in algorithm.AlgorithmParameters
    assert_seg_equals_labels_file(
        tmp_path / "q" / "seg.dcm", tmp_path / "q" / "labels.nii.gz", source_headers(phantom_series), *metrics["slices"]
    )
    assert_valid_dicom(dciodvfy, tmp_path / "q" / "seg.dcm", "Segmentation")


def test_quantify_maps_a_seg_from_another_writer_by_its_codes(whole_run, phantom_series, tmp_path):
    """A SEG written by highdicom directly, as another tool would: segments in another order and named in
    words (only their terminology codes say which tissue), frames for some slices only."""
    from pydicom.sr.coding import Code

    out, _ = whole_run
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))  # (k, j, i)
    headers = source_headers(phantom_series)
    for header in headers:  # the test series leaves these required-but-empty attributes out
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
            setattr(header, keyword, None)
    terms = tissue_terms()
    order = [("Bone", "Bone tissue"), ("IAT", "Fat between muscles"), ("SM", "Muscle"), ("SAT", "Subcutaneous fat")]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=words,
            segmented_property_category=Code(terms[key].category.value, "SCT", terms[key].category.meaning),
            segmented_property_type=Code(terms[key].type.value, "SCT", terms[key].type.meaning),
            algorithm_type="MANUAL",
        )
        for n, (key, words) in enumerate(order, start=1)
    ]
    first, last = 1, 6
    stacked = np.stack([labels[first : last + 1] == tissues.TISSUE_BY_KEY[key].value for key, _ in order], axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=headers[first : last + 1],
            pixel_array=stacked.astype(np.uint8),
            segmentation_type="BINARY",
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=300,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="another tool",
            manufacturer_model_name="test",
            software_versions="1",
            device_serial_number="1",
        )
    seg.save_as(tmp_path / "other.dcm")
    done = w.run_legsegnet("quantify", phantom_series, tmp_path / "other.dcm", "-o", tmp_path / "q", "--quiet")
    assert done.returncode == 0, done.stderr
    measured = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "q" / "labels.nii.gz")))
    expected = np.zeros_like(labels)
    expected[first : last + 1] = labels[first : last + 1]
    assert np.array_equal(measured, expected)
    assert json.loads((tmp_path / "q" / "metrics.json").read_text())["slices"] == [first, last]


def test_nnunet_model_name_and_round_identify_the_algorithm(phantom_series, tmp_path, monkeypatch):
    """A real (tiny, cached) nnU-Net model installed as annotation round 3 in the test's private model store."""
    import nnunet_fixtures

    from LegSegNetLib.models.store import ModelStore

    monkeypatch.setenv("LEGSEGNET_MODELS_DIR", str(tmp_path / "store"))  # the CLI subprocess inherits it
    ModelStore().install(nnunet_fixtures.get_model("png"), name="tiny-round3", training_round=3)
    out = tmp_path / "out"
    _run_dicom(phantom_series, out, "--engine", "nnunet", "--model", "tiny-round3", "--device", "cpu", "--folds", "0")
    seg, sr = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "sr.dcm")
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert dict(p.split("=", 1) for p in algorithm.AlgorithmParameters.split(",")) == {
        "engine": "nnunet",
        "model": "tiny-round3",
        "round": "3",
    }
    assert _concept(algorithm.AlgorithmFamilyCodeSequence[0]) == ("DCM", "123110")  # Artificial Intelligence
    assert seg.ManufacturerModelName == "LegSegNet nnunet tiny-round3"
    texts = {str(item.TextValue) for item in _walk(sr) if item.ValueType == "TEXT"}
    assert {"LegSegNet", "engine=nnunet", "model=tiny-round3", "round=3"} <= texts  # TID 4019 in every group


def _walk(dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _walk(item)


# ---------------------------------------------------------------------------------------------- the real calf CT
@pytest.mark.slow
def test_visible_human_calf_round_trip(visible_human_dir, tmp_path, dciodvfy):
    """350 real slices: valid files, SEG == labels.nii.gz on every slice, SR == metrics.json, references."""
    out = tmp_path / "out"
    started = time.perf_counter()
    metrics = _run_dicom(visible_human_dir, out)
    seconds = time.perf_counter() - started
    headers = source_headers(visible_human_dir)
    first, last = metrics["slices"]
    assert (first, last) == (0, 349)
    assert_valid_dicom(dciodvfy, out / "seg.dcm", "Segmentation")
    assert_valid_dicom(dciodvfy, out / "sr.dcm", "Comprehensive3DSR")
    assert_seg_equals_labels_file(out / "seg.dcm", out / "labels.nii.gz", headers, first, last)
    seg = pydicom.dcmread(out / "seg.dcm")
    sr = pydicom.dcmread(out / "sr.dcm")
    assert_references_source(seg, sr, headers, first, last)
    assert_sr_equals_metrics(sr, metrics, seg)
    # 1 bit per pixel per segment on every slice: 350 x 4 frames of 512 x 512 pixels, about 46 MB.
    frame_bytes = 512 * 512 // 8
    assert (out / "seg.dcm").stat().st_size < 1.01 * 350 * 4 * frame_bytes + 2_000_000
    print(
        f"\n--dicom on 350 slices: {seconds:.1f} s in all; seg.dcm {(out / 'seg.dcm').stat().st_size / 1e6:.1f} MB "
        f"({int(seg.NumberOfFrames)} frames), sr.dcm {(out / 'sr.dcm').stat().st_size / 1e3:.0f} kB"
    )
