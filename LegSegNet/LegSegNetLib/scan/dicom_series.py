"""`DicomSeries`: what a CT read from DICOM must remember of its files to be referenced by new DICOM objects.

The DICOM reader (dicom_folder.py) already parses every slice's header to sort the series; it keeps, per slice in the
volume's storage order, only the SOP Instance UID and the image position, plus one header (the first
slice's, without pixel data or private tags) for the patient, study, series, frame of reference and
image-plane attributes that all slices share. A few kilobytes for a 350-slice series; no pixel is read again.

`source_images(first, last)` turns that back into header-only datasets, one per slice, that highdicom
accepts as the "source images" of a segmentation or the evidence of a structured report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Attributes that differ from slice to slice and must not be taken from the first slice's header.
_PER_SLICE_KEYWORDS = ("SOPInstanceUID", "ImagePositionPatient", "InstanceNumber", "SliceLocation")


@dataclass(frozen=True)
class DicomSeries:
    header: object  # pydicom Dataset of the first slice: no pixel data, no private tags
    sop_instance_uids: tuple[str, ...]  # slice k of the volume (storage order) is this instance
    positions: np.ndarray | None  # (n, 3) ImagePositionPatient per slice; None when a slice lacks it
    sop_class_uids: frozenset[str]  # of all slices (one, for a sound series)
    frame_of_reference_uids: frozenset[str]  # of all slices ('' when missing)
    multiframe: bool = False  # one file holding all slices as frames (Enhanced CT)

    @property
    def n_slices(self) -> int:
        return len(self.sop_instance_uids)

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.header.get("FrameOfReferenceUID", ""))

    def source_images(self, first: int = 0, last: int | None = None) -> list:
        """Header-only datasets of slices first..last (inclusive): the shared header with each slice's
        own SOP Instance UID, position and instance number."""
        from pydicom import Dataset

        last = self.n_slices - 1 if last is None else last
        shared = [element for element in self.header if element.keyword not in _PER_SLICE_KEYWORDS]
        out = []
        for k in range(first, last + 1):
            ds = Dataset()  # its own element table; the shared elements are never changed, so no copies
            for element in shared:
                ds.add(element)
            ds.SOPInstanceUID = self.sop_instance_uids[k]
            if self.positions is not None:
                ds.ImagePositionPatient = [float(v) for v in self.positions[k]]
            out.append(ds)
        return out


def series_from_slices(slices: Sequence, multiframe: bool = False) -> DicomSeries | None:
    """A DicomSeries from the reader's per-slice headers, already in storage order (objects with `path`,
    `sop_instance_uid`, `sop_class_uid`, `frame_of_reference_uid` and `position`). None if the first
    file's header cannot be read again (it was readable a moment ago; the folder changed under us)."""
    header = _shared_header(slices[0].path)
    if header is None:
        return None
    positions = None
    if all(s.position is not None for s in slices):
        positions = np.array([s.position for s in slices], dtype=float)
    return DicomSeries(
        header=header,
        sop_instance_uids=tuple(s.sop_instance_uid for s in slices),
        positions=positions,
        sop_class_uids=frozenset(s.sop_class_uid for s in slices),
        frame_of_reference_uids=frozenset(s.frame_of_reference_uid for s in slices),
        multiframe=multiframe,
    )


def _shared_header(path: Path):
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
        return None
    header.remove_private_tags()
    for tag in [t for t in header.keys() if t.group >= 0x6000]:  # overlays, curves, pixel data group lengths
        del header[tag]
    return header
