"""A DICOM Segmentation as a LegSegNet label map on its CT's grid (`quantify`, `evaluate`, ... label input).

The SEG must belong to the CT given beside it: same Frame of Reference UID, and every source image it
references is an image of that CT series. Its frames are placed by those references (slice k of the CT
is the frame derived from instance k), so no resampling and no tolerance is involved; slices without a
frame are background. Segments are matched to tissues by name (SAT, SM, IAT, Bone, as LegSegNet writes
them) or else by their segmented property type code from the terminology file. Anything else (another
series, overlapping segments, an unknown segment, a fractional SEG) is refused with one sentence.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError, LegSegNetError
from ..core.terminology import tissue_terms
from ..core.tissues import TISSUE_BY_VALUE, TISSUES
from .ct_volume import CTVolume

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"


def require_highdicom(what: str = "--dicom") -> None:
    """Fail early, with what to install, when highdicom is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise LegSegNetError(
            f"{what} needs the Python package highdicom, which is not installed: pip install 'legsegnet[dicom]'"
        ) from None


def read_seg_labels(path: str | Path, volume: CTVolume) -> sitk.Image:
    """The SEG at `path` as a uint8 label image (values 0-4) with exactly the CT's geometry."""
    require_highdicom("reading a DICOM SEG")
    import highdicom as hd
    import pydicom

    path = Path(path)
    series = volume.dicom
    if series is None or series.multiframe:
        raise InputError(
            f"'{path.name}' is a DICOM file; a DICOM SEG can only be measured on the DICOM CT series it references: "
            "give that series' folder as the CT"
        )
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise InputError(f"could not read '{path.name}' as DICOM ({exc}); the file is corrupt or truncated") from None
    if dataset.get("SOPClassUID") not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE):
        raise InputError(
            f"'{path.name}' is a DICOM file but not a DICOM Segmentation (SOP class {dataset.get('SOPClassUID', 'none')}); "
            "give a DICOM SEG, or the label map as NIfTI/NRRD/MetaImage"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's remarks on attribute values
        try:
            seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"'{path.name}' is not a valid DICOM SEG ({exc}); export the segmentation again") from None
    _check_references(seg, series, path.name)
    lookup = _tissue_lookup(seg, path.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            frames = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(series.sop_instance_uids),
                segment_numbers=sorted(lookup),
                combine_segments=True,
                relabel=False,
                assert_missing_frames_are_empty=True,  # slices the SEG has no frame for are background
                dtype=np.uint16,
            )
        except RuntimeError as exc:
            raise InputError(
                f"the segments of '{path.name}' overlap ({exc}); LegSegNet labels give each voxel one tissue: "
                "remove the overlap and export again"
            ) from None
        except (ValueError, KeyError, AttributeError) as exc:
            raise InputError(
                f"'{path.name}' cannot be placed on the CT's slices ({exc}); its frames must correspond pixel for pixel "
                "to the CT's images (export it with the CT as reference geometry)"
            ) from None
    table = np.zeros(max(lookup) + 1, dtype=np.uint8)
    for segment_number, tissue_value in lookup.items():
        table[segment_number] = tissue_value
    # A frame is (row j, column i) and slice k of the CT is instance k: numpy order (k, j, i), as SimpleITK's.
    labels = sitk.GetImageFromArray(table[frames])
    if labels.GetSize() != volume.image.GetSize():
        raise InputError(
            f"'{path.name}' has frames of {frames.shape[2]} x {frames.shape[1]} pixels but the CT's images are "
            f"{volume.image.GetSize()[0]} x {volume.image.GetSize()[1]}; give the SEG made on this CT"
        )
    labels.CopyInformation(volume.image)
    return labels


def _check_references(seg, series, name: str) -> None:
    """Same frame of reference, and every referenced source image one of this CT series' images."""
    seg_frame = str(seg.get("FrameOfReferenceUID", ""))
    if seg_frame != series.frame_of_reference_uid:
        raise InputError(
            f"'{name}' does not belong to this CT: its Frame of Reference UID {seg_frame or '(none)'} differs from "
            f"the CT's {series.frame_of_reference_uid}; give the SEG made on this CT series"
        )
    referenced_series = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if series.series_instance_uid not in referenced_series:
        raise InputError(
            f"'{name}' does not belong to this CT: it references series {', '.join(sorted(referenced_series)) or '(none)'}, "
            f"not the CT's {series.series_instance_uid}; give the SEG made on this CT series"
        )
    ct_instances = set(series.sop_instance_uids)
    foreign = [
        str(ref.ReferencedSOPInstanceUID)
        for item in seg.ReferencedSeriesSequence
        if str(item.SeriesInstanceUID) == series.series_instance_uid
        for ref in item.get("ReferencedInstanceSequence", [])
        if str(ref.ReferencedSOPInstanceUID) not in ct_instances
    ]
    if foreign:
        raise InputError(
            f"'{name}' references {len(foreign)} image(s) of the series that are not in the CT given (e.g. "
            f"{foreign[0]}); give the complete series the SEG was made on"
        )


def _tissue_lookup(seg, name: str) -> dict[int, int]:
    """Segment number -> tissue label value, by segment label or, failing that, by property type code."""
    if str(seg.get("SegmentationType", "")) == "FRACTIONAL":
        raise InputError(f"'{name}' is a fractional (probability) SEG; give a binary SEG or a label map")
    by_key = {t.key.lower(): t.value for t in TISSUES}
    terms = tissue_terms()
    by_code = {(terms[t.key].type.scheme, terms[t.key].type.value): t.value for t in TISSUES}
    ambiguous_codes = {code for code in by_code if list(by_code).count(code) > 1}
    lookup: dict[int, int] = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", "")).strip()
        value = by_key.get(label.lower())
        if value is None:
            types = item.get("SegmentedPropertyTypeCodeSequence", [])
            code = (str(types[0].CodingSchemeDesignator), str(types[0].CodeValue)) if types else None
            value = by_code.get(code) if code not in ambiguous_codes else None
        if value is None:
            raise InputError(
                f"segment {number} '{label}' of '{name}' is not a LegSegNet tissue; the segments must be named SAT, SM, "
                "IAT and Bone (or carry their terminology codes): remove or rename it"
            )
        if value in lookup.values():
            raise InputError(
                f"'{name}' has two segments for tissue {TISSUE_BY_VALUE[value].key}; merge them and export again"
            )
        lookup[number] = value
    if not lookup:
        raise InputError(f"'{name}' holds no segments")
    return lookup
