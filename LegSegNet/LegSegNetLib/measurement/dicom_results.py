"""Results back to the PACS: a DICOM Segmentation (`seg.dcm`) and a TID 1500 measurement report (`sr.dcm`).

Built with highdicom from the source series' headers (`CTVolume.dicom`, see dicom_series.py); the source
files are never opened for writing. `build_seg_and_sr` is the one entry point (the CLI's `--dicom`, and
anything that has a DICOM CT, its labels and metrics.json's numbers, uses it).

SEG (Segmentation Storage, BINARY): one segment per tissue, in label order (segment 1 SAT, 2 SM, 3 IAT,
4 Bone), named, coloured and coded (SNOMED CT) as in Resources/LegSegNet.term.json; frames pixel for pixel
on the analysed source slices only (empty frames omitted), each frame referencing its source image;
the source series and frame of reference referenced; uncompressed, for the widest set of readers (the
validator dciodvfy cannot read a deflated SEG; JPEG 2000 needs a decoder not every toolkit has).

SR (Comprehensive 3D SR, TID 1500 "Imaging Measurement Report"): for the whole analysed range and for
each leg present, one TID 1411 volumetric group per tissue referencing its SEG segment (volume, mean and
SD of HU), and one TID 1501 group with the derived metrics (coded in the private scheme 99LEGSEGNET), each
referencing the segments it is computed from. Values are metrics.json's, bit for bit (Floating Point Value
beside the 16-character decimal string). An empty tissue has volume 0 and no mean or SD.

Patient and study attributes come from the source header unchanged; every object gets new UIDs.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import InputError
from ..core.terminology import tissue_terms
from ..core.tissues import TISSUES
from ..scan.ct_volume import CTVolume
from ..scan.dicom_seg_labels import require_highdicom
from .quantify import SIDES

SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
SEG_SERIES_NUMBER = 1001  # far above scanners' own series numbers
SR_SERIES_NUMBER = 1002
MANUFACTURER = "LegSegNet"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PRIVATE_SCHEME = "99LEGSEGNET"  # "99" prefix: a private coding scheme (DICOM PS3.16 section 8)

# Derived metrics (metrics.json "derived") -> (code value, meaning, unit key, tissues it is computed from)
DERIVED_CODES = {
    "V_Fat_cm3": ("V_Fat", "Fat volume (SAT + IAT)", "cm3", ("SAT", "IAT")),
    "R_IAT_SAT": ("R_IAT_SAT", "IAT to SAT volume ratio", "ratio", ("IAT", "SAT")),
    "R_SM_Fat": ("R_SM_Fat", "Skeletal muscle to fat volume ratio", "ratio", ("SM", "SAT", "IAT")),
    "mu_SM_hu": ("mu_SM", "Mean attenuation of skeletal muscle", "hu", ("SM",)),
    "mu_Fat_hu": ("mu_Fat", "Mean attenuation of fat (SAT and IAT voxels together)", "hu", ("SAT", "IAT")),
}
REGION_NAMES = {"whole": "both legs", "left": "left leg", "right": "right leg"}
# Patient and study attributes every DICOM object must carry (Type 2: present, possibly empty).
_TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class Provenance:
    """Which algorithm made the labels: recorded in the SEG's and the SR's algorithm identification."""

    engine: str  # threshold, nnunet, external (labels made elsewhere, e.g. corrected by hand)
    model: str | None = None
    round: int | None = None  # model-in-the-loop training round of the model
    version: str = __version__  # LegSegNet's

    @classmethod
    def from_run_info(cls, run_info: dict) -> Provenance:
        return cls(
            engine=str(run_info.get("engine") or "external"),
            model=run_info.get("model"),
            round=run_info.get("round"),
            version=str(run_info.get("legsegnet_version") or __version__),
        )

    def parameters(self) -> dict[str, str]:
        return {
            "engine": self.engine,
            "model": self.model or "none",
            "round": "none" if self.round is None else str(self.round),
        }


# ---------------------------------------------------------------------------------------------- checks
def may_be_dicom(path: str | Path) -> bool:
    """False for an input file the reader would not read as DICOM (a folder is a DICOM series to the reader;
    an empty or unreadable file is left to the reader's own error)."""
    from ..scan.volume_io import file_kind  # the reader's own decision on file types

    path = Path(path).expanduser()
    if path.is_file() and path.name.upper() != "DICOMDIR" and path.stat().st_size > 0:
        try:
            return file_kind(path) == "dicom"
        except InputError:
            return False
    return True


def check_input_path(path: str | Path) -> None:
    """Refuse `--dicom` for an input that cannot be DICOM, before anything is read."""
    require_highdicom()
    path = Path(path).expanduser()
    if not may_be_dicom(path):
        raise InputError(
            f"--dicom writes DICOM objects that reference the source images, but '{path.name}' is not DICOM; "
            "give the folder of the DICOM CT series, or leave out --dicom"
        )


def check_exportable(volume: CTVolume) -> None:
    """Refuse a read volume that new DICOM objects could not reference correctly (before segmenting)."""
    series = volume.dicom
    if series is None:
        raise InputError(
            f"--dicom writes DICOM objects that reference the source images, but '{Path(volume.source).name}' was not "
            "read from DICOM; give the folder of the DICOM CT series, or leave out --dicom"
        )
    if series.multiframe:
        raise InputError(
            "--dicom needs a CT series of single-slice images; this is one multi-frame file (Enhanced CT): "
            "convert it to single-frame images, or leave out --dicom"
        )
    if series.sop_class_uids != {CT_IMAGE_STORAGE}:
        shown = ", ".join(sorted(series.sop_class_uids))
        raise InputError(
            f"--dicom needs CT Image Storage images (SOP class {CT_IMAGE_STORAGE}), not {shown}; export the original "
            "CT series, or leave out --dicom"
        )
    if series.n_slices != volume.n_slices or volume.axial_axis != 2:
        raise InputError(
            "--dicom needs a series of axial slices (its images must be the scan's axial slices); resample it to "
            "axial slices first, or leave out --dicom"
        )
    if series.positions is None:
        raise InputError(
            "--dicom needs every image's position (ImagePositionPatient); the series lacks it on some slices: "
            "export the series again, or leave out --dicom"
        )
    if len(set(series.sop_instance_uids)) != series.n_slices or "" in series.sop_instance_uids:
        n_bad = series.n_slices - len(set(series.sop_instance_uids) - {""})
        raise InputError(
            f"the CT series has {n_bad} image(s) whose SOP Instance UID is missing or repeated (copies of one image, "
            "or a damaged export); export the series again"
        )
    if len(series.frame_of_reference_uids) != 1 or "" in series.frame_of_reference_uids:
        raise InputError(
            "--dicom needs one Frame of Reference UID shared by all images of the series; this series has "
            f"{len(series.frame_of_reference_uids - {''})} (and may lack it): export the series again"
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "PixelSpacing", "ImageOrientationPatient"):
        if keyword not in series.header:
            raise InputError(f"the CT series lacks {keyword}; export the series again, or leave out --dicom")


# ---------------------------------------------------------------------------------------------- build
def build_seg_and_sr(volume: CTVolume, labels_slab: np.ndarray, first: int, metrics: dict, provenance: Provenance):
    """The SEG and SR datasets for labels on slices first.. of a DICOM CT; `metrics` as in metrics.json
    (at least its "tissues", "derived" and "legs"). Returns (highdicom Segmentation, Comprehensive3DSR)."""
    check_exportable(volume)
    last = first + labels_slab.shape[0] - 1
    source_images = volume.dicom.source_images(first, last)
    for ds in source_images:
        for keyword in _TYPE2_IDENTITY:
            if keyword not in ds:
                setattr(ds, keyword, None)  # required but may be empty; some exports leave them out
    with warnings.catch_warnings():
        # highdicom warns about the source's own attribute values (e.g. a one-part patient name), which are
        # copied as they are; the user cannot act on that here.
        warnings.simplefilter("ignore", UserWarning)
        seg = _build_seg(source_images, labels_slab, provenance, first, last)
        sr = _build_sr(seg, source_images, metrics, provenance)
    return seg, sr


def encode(dataset) -> bytes:
    """The dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_output_files(
    volume: CTVolume, labels_slab: np.ndarray, first: int, metrics: dict, provenance: Provenance
) -> dict[str, bytes]:
    """{"seg.dcm": bytes, "sr.dcm": bytes}, ready for the report writer to stage with the other files."""
    seg, sr = build_seg_and_sr(volume, labels_slab, first, metrics, provenance)
    return {SEG_FILE: encode(seg), SR_FILE: encode(sr)}


def _algorithm_sequence(provenance: Provenance):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    family = (
        codes.cid7162.ArtificialIntelligence
        if provenance.engine == "nnunet"
        else (codes.cid7162.MorphologicalOperations)
    )  # HU windows and morphology
    return hd.AlgorithmIdentificationSequence(
        name=MANUFACTURER, family=family, version=provenance.version, parameters=provenance.parameters()
    )


def _build_seg(source_images: list, labels_slab: np.ndarray, provenance: Provenance, first: int, last: int):
    import highdicom as hd
    from pydicom.sr.coding import Code

    algorithm = _algorithm_sequence(provenance)
    terms = tissue_terms()
    descriptions = []
    for tissue in TISSUES:  # segment number = label value: 1 SAT, 2 SM, 3 IAT, 4 Bone
        term = terms[tissue.key]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=tissue.value,
                segment_label=tissue.key,
                segmented_property_category=Code(term.category.value, term.category.scheme, term.category.meaning),
                segmented_property_type=Code(term.type.value, term.type.scheme, term.type.meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"{tissue.key} ({tissue.name})"[:64],
                display_color=hd.color.CIELabColor.from_rgb(*term.rgb),  # 0-255
            )
        )
    # The slab's rows are ITK axis 0 (i) and its columns axis 1 (j); a DICOM frame is (row j, column i).
    frames = np.transpose(np.asarray(labels_slab, dtype=np.uint8), (0, 2, 1))
    return hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=_model_name(provenance),
        software_versions=provenance.version,
        device_serial_number="0",  # software, no hardware serial; the attribute is required
        content_label="LEGSEGNET",
        content_description=f"LegSegNet tissues, slices {first}-{last}"[:64],
        series_description="LegSegNet tissues (SAT, SM, IAT, Bone)",
        omit_empty_frames=True,
    )


def _model_name(provenance: Provenance) -> str:
    name = f"LegSegNet {provenance.engine}" + (f" {provenance.model}" if provenance.model else "")
    return name[:64]  # LO


def _build_sr(seg, source_images: list, metrics: dict, provenance: Provenance):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(
        name=MANUFACTURER,
        version=provenance.version,
        parameters=[f"{key}={value}" for key, value in provenance.parameters().items()],
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(),
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=_model_name(provenance),
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )
    groups = []
    regions = [("whole", metrics)] + [
        (side, metrics["legs"][side]) for side in SIDES if side in metrics.get("legs", {})
    ]
    for region, numbers in regions:
        groups += _tissue_groups(seg, region, numbers, algorithm)
        groups.append(_derived_group(seg, region, numbers, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.SCT.ComputedTomography,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *source_images],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # automatic results nobody has verified yet
        series_description="LegSegNet body composition",
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="LegSegNet derived body-composition metrics",
                responsible_organization="LegSegNet",
            )
        ],
    )


def _finding_sites(region: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    laterality = {"whole": codes.SCT.RightAndLeft, "left": codes.SCT.Left, "right": codes.SCT.Right}[region]
    return [hd.sr.FindingSite(anatomic_location=codes.SCT.LowerLimb, laterality=laterality)]


def _tissue_groups(seg, region: str, numbers: dict, algorithm) -> list:
    """TID 1411 per tissue: volume, mean and SD of HU, referencing the tissue's segment."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    terms = tissue_terms()
    source_series = hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    groups = []
    for tissue in TISSUES:
        stats = numbers["tissues"][tissue.key]
        term = terms[tissue.key]
        measurements = [
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=float(stats["volume_cm3"]),
                unit=codes.UCUM.CubicCentimeter,
                algorithm_id=algorithm,
            )
        ]
        for name, key in ((codes.SCT.Mean, "mean_hu"), (codes.SCT.StandardDeviation, "sd_hu")):
            if _is_number(stats.get(key)):  # empty tissue: no mean; one voxel: no SD
                measurements.append(
                    hd.sr.Measurement(
                        name=name,
                        value=float(stats[key]),
                        unit=codes.UCUM.HounsfieldUnit,
                        algorithm_id=algorithm,
                    )
                )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{tissue.key}, {REGION_NAMES[region]}"
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=tissue.value,
                    source_series=source_series,
                ),
                finding_category=Code(term.category.value, term.category.scheme, term.category.meaning),
                finding_type=Code(term.type.value, term.type.scheme, term.type.meaning),
                finding_sites=_finding_sites(region),
                algorithm_id=algorithm,
                measurements=measurements,
            )
        )
    return groups


def _derived_group(seg, region: str, numbers: dict, algorithm):
    """TID 1501 with the derived metrics; each measurement references the segments it is computed from."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    units = {"cm3": codes.UCUM.CubicCentimeter, "ratio": codes.UCUM.NoUnits, "hu": codes.UCUM.HounsfieldUnit}
    segment_of = {t.key: t.value for t in TISSUES}
    measurements = []
    for key, (code_value, meaning, unit, tissue_keys) in DERIVED_CODES.items():
        value = numbers["derived"].get(key)
        if not _is_number(value):
            continue  # e.g. mu_Fat without any fat voxel
        source = hd.sr.SourceImageForMeasurement(seg.SOPClassUID, seg.SOPInstanceUID)
        source.ReferencedSOPSequence[0].ReferencedSegmentNumber = sorted(segment_of[k] for k in tissue_keys)
        measurements.append(
            hd.sr.Measurement(
                name=Code(code_value, PRIVATE_SCHEME, meaning),
                value=float(value),
                unit=units[unit],
                algorithm_id=algorithm,
                referenced_images=[source],
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"Derived metrics, {REGION_NAMES[region]}"
        ),
        finding_sites=_finding_sites(region),
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
