"""Test helpers: one synthetic leg CT, stored in many orientations and file formats.

Everything here writes real files with real libraries (SimpleITK, pydicom, Pillow) so the readers under
test see exactly what a scanner export or another tool would give them. Orientations use the DICOM/ITK
3-letter codes of `sitk.DICOMOrient` ("LPS" = identity direction; "RAS" flips x and y; "LPI" flips the
superior/inferior axis; "SLP"-style codes permute the voxel axes). Reorienting only permutes/flips the
voxel array and adjusts the geometry, so every copy holds the same HU at the same physical points.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

AIR_HU = -1000
SAT_HU = -100
MUSCLE_HU = 50
IAT_HU = -90
CORTEX_HU = 1200
MARROW_HU = 300

# The default synthetic leg: anisotropic spacing and an asymmetric, slowly changing anatomy, so any
# mix-up of axes, flips or spacings shows in the outputs.
LEG_SHAPE_ZYX = (12, 72, 128)
LEG_SPACING_XYZ = (1.8, 1.6, 3.0)
LEG_ORIGIN_XYZ = (-110.0, -60.0, -400.0)


# ---------------------------------------------------------------------- synthetic volume
def synthetic_legs(shape_zyx: tuple[int, int, int] = LEG_SHAPE_ZYX, spacing_xyz=LEG_SPACING_XYZ) -> np.ndarray:
    """Two calves in air, int16 HU in SimpleITK order (k, j, i) = (S/I, A/P, R/L) for an LPS image.

    Each leg: a fat ring (SAT) around muscle holding two fat islands (IAT), a tibia (cortex ring with
    marrow) and a thinner fibula. The right leg (low x in LPS) is larger; both legs taper toward the
    ankle (low k) so a flipped superior/inferior axis changes the result.
    """
    nz, ny, nx = shape_zyx
    sx, sy, _ = spacing_xyz
    y_mm, x_mm = np.meshgrid((np.arange(ny) - ny / 2 + 0.5) * sy, (np.arange(nx) - nx / 2 + 0.5) * sx, indexing="ij")
    volume = np.full(shape_zyx, AIR_HU, dtype=np.int16)
    width_mm = nx * sx
    for k in range(nz):
        taper = 0.75 + 0.25 * k / max(nz - 1, 1)  # thinner toward the ankle (k = 0)
        for side, (cx, scale) in enumerate(((-0.24 * width_mm, 1.0), (0.24 * width_mm, 0.85))):
            a, b = 48 * scale * taper, 40 * scale * taper  # half axes of the leg, mm
            u, v = x_mm - cx, y_mm + 4.0
            leg = (u / a) ** 2 + (v / b) ** 2 <= 1
            fascia = (u / (a - 9)) ** 2 + (v / (b - 8)) ** 2 <= 1
            sl = volume[k]
            sl[leg] = SAT_HU
            sl[fascia] = MUSCLE_HU
            for iu, iv, r in ((0.35 * a, 0.25 * b, 5.0), (-0.3 * a, 0.35 * b, 4.0 + side)):
                sl[(u - iu) ** 2 + (v - iv) ** 2 <= r**2] = IAT_HU
            tibia_u, tibia_v = 0.15 * a * (1 if side == 0 else -1), -0.35 * b
            d_tibia = np.hypot(u - tibia_u, v - tibia_v)
            sl[d_tibia <= 12 * scale] = CORTEX_HU
            sl[d_tibia <= 7 * scale] = MARROW_HU
            d_fibula = np.hypot(u + 0.45 * a * (1 if side == 0 else -1), v + 0.1 * b)
            sl[d_fibula <= 5 * scale] = CORTEX_HU
    return volume


def lps_image(hu_zyx: np.ndarray, spacing_xyz=LEG_SPACING_XYZ, origin_xyz=LEG_ORIGIN_XYZ) -> sitk.Image:
    """An image with identity direction (voxel axes = patient L, P, S)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu_zyx))
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetOrigin([float(o) for o in origin_xyz])
    return image


def leg_image() -> sitk.Image:
    """The default synthetic legs as an LPS image."""
    return lps_image(synthetic_legs())


def phantom_image(shape=(8, 72, 96), spacing=(5.0, 3.0, 3.4), seed: int = 3) -> tuple[sitk.Image, sitk.Image]:
    """The project's leg phantom (LegSegNetLib.phantom) as (CT, true labels) images, in the phantom's own
    storage order. No calcifications or contrast, so HU > 600 means bone."""
    from LegSegNetLib.phantom import make_leg_phantom

    phantom = make_leg_phantom(shape=shape, spacing=spacing, seed=seed, contrast_vessels=False, calcifications=False)
    volume, labels = phantom.to_volume()
    return volume.image, labels


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """The same physical image stored with voxel axes pointing as `code` says (e.g. 'RAS', 'LPI', 'SLP')."""
    return sitk.DICOMOrient(image, code)


def rotated(image: sitk.Image, degrees: float, axis: str = "x") -> sitk.Image:
    """The same voxels with the direction cosines turned about a patient axis: an oblique acquisition."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    rot = {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]
    out = sitk.Image(image)
    out.SetDirection((rot @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    return out


# ---------------------------------------------------------------------- ITK file formats
def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write with SimpleITK; the format follows the extension (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def write_header_only_mhd(path: str | Path, size_xyz: Iterable[int], element_type: str = "MET_SHORT") -> Path:
    """A MetaImage header that claims `size_xyz` voxels; its data file does not exist."""
    path = Path(path)
    size = " ".join(str(int(s)) for s in size_xyz)
    path.write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {size}\nElementSpacing = 1 1 1\nElementType = {element_type}\n"
        f"ElementDataFile = {path.stem}.raw\n"
    )
    return path


# ---------------------------------------------------------------------- DICOM
def write_dicom_series(
    image: sitk.Image,
    folder: str | Path,
    *,
    modality: str = "CT",
    reverse: bool = False,
    shuffle_names: bool = False,
    seed: int = 0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    series_number: int = 1,
    description: str = "synthetic legs",
    name_prefix: str = "slice",
) -> list[Path]:
    """Write each slice along ITK axis 2 as one DICOM file (uncompressed, stored = (HU - intercept) / slope).

    `reverse` numbers the files (and InstanceNumber) from the last slice to the first; `shuffle_names`
    gives the files random names, so only ImagePositionPatient tells the order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu = sitk.GetArrayFromImage(image)  # (k, j, i): one (rows=j, cols=i) slice per k
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    origin = np.array(image.GetOrigin())
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("HU do not fit int16 with this slope/intercept")
    stored = stored.astype(np.int16)
    study_uid, frame_uid = generate_uid(), generate_uid()
    series_uid = series_uid or generate_uid()
    order = list(range(hu.shape[0]))
    if reverse:
        order.reverse()
    names = [f"{name_prefix}{n:04d}.dcm" for n in range(len(order))]
    if shuffle_names:
        rng = random.Random(seed)
        names = [f"{rng.getrandbits(40):010x}.dcm" for _ in order]
    paths = []
    for instance, (k, name) in enumerate(zip(order, names), start=1):
        position = origin + k * spacing[2] * direction[:, 2]
        ds = _dicom_dataset(
            modality=modality,
            pixels=stored[k],
            row_cosine=direction[:, 0],
            column_cosine=direction[:, 1],
            position=position,
            pixel_spacing=(spacing[1], spacing[0]),  # DICOM: between rows, then between columns
            thickness=spacing[2],
            slope=slope,
            intercept=intercept,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            series_number=series_number,
            instance=instance,
            description=description,
        )
        path = folder / name
        save_dicom_file(ds, path)
        paths.append(path)
    return paths


def write_dicom_slice(
    hu_2d: np.ndarray,
    path: str | Path,
    *,
    modality: str = "CT",
    spacing=(0.8, 0.8),
    position=(0.0, 0.0, 0.0),
    row_cosine=(1, 0, 0),
    column_cosine=(0, 1, 0),
) -> Path:
    """One 2D DICOM file from an HU array (rows, cols)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _dicom_dataset(
        modality=modality,
        pixels=(np.asarray(hu_2d) + 1024).astype(np.int16),
        row_cosine=np.asarray(row_cosine, float),
        column_cosine=np.asarray(column_cosine, float),
        position=np.asarray(position, float),
        pixel_spacing=spacing,
        thickness=1.0,
        slope=1.0,
        intercept=-1024.0,
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        frame_uid=generate_uid(),
        series_number=1,
        instance=1,
        description="one slice",
    )
    save_dicom_file(ds, path)
    return path


def save_dicom_file(ds: FileDataset, path: Path) -> None:
    """Write `ds` as a DICOM file (preamble and file meta) with pydicom 3, or pydicom 2.4 as Slicer 5.6-5.10 ship."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, write_like_original=False)


def _dicom_dataset(
    *,
    modality,
    pixels,
    row_cosine,
    column_cosine,
    position,
    pixel_spacing,
    thickness,
    slope,
    intercept,
    study_uid,
    series_uid,
    frame_uid,
    series_number,
    instance,
    description,
) -> FileDataset:
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Synthetic^Legs", "LEGSEGNET-TEST"
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series_number, instance, description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{float(v):.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{float(v):.6f}" for v in (*row_cosine, *column_cosine)]
    ds.PixelSpacing = [f"{float(v):.6f}" for v in pixel_spacing]
    ds.SliceThickness = f"{float(thickness):.6f}"
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


# ---------------------------------------------------------------------- PNG
def hu_to_app_png(hu_2d: np.ndarray) -> np.ndarray:
    """The published app's input: HU clipped to [-200, 200], scaled to 0..255 and truncated to uint8."""
    return ((np.clip(hu_2d.astype(np.float64), -200, 200) + 200) / 400 * 255).astype(np.uint8)


def write_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an array as PNG with Pillow; the PNG mode follows the array (uint8 (h, w) = 'L',
    uint8 (h, w, 3) = 'RGB', uint16 = 16-bit grey)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def truncate_file(path: str | Path, keep_fraction: float = 0.6) -> Path:
    """Cut a file short, like an interrupted copy or download."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


# ---------------------------------------------------------------------- the command line
def run_legsegnet(
    *args: str | Path, cwd: str | Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `legsegnet ARGS` as a real subprocess of this interpreter; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *[str(a) for a in args]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def file_size_limit(size_bytes: int):
    """A real write failure: while active, no file of this process can grow beyond `size_bytes` (the write fails
    with EFBIG, as on a full quota; Python ignores the SIGXFSZ signal that would otherwise end the process)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def phantom_training_set(folder: Path, slices: str = "1", seed: int = 4) -> tuple[Path, Path, Path]:
    """A phantom CT and its labels as files in `folder`, and a training set `folder/set` made from `slices` of
    them by the real `legsegnet dataset add`: (CT, labels, set)."""
    ct, labels = phantom_image(seed=seed)
    ct_path, labels_path = write_image(ct, folder / "ct.nii.gz"), write_image(labels, folder / "labels.nii.gz")
    done = run_legsegnet(
        "dataset", "add", ct_path, labels_path, "--dataset", folder / "set", "--slices", slices, "--quiet"
    )
    assert done.returncode == 0, done.stderr
    return ct_path, labels_path, folder / "set"
