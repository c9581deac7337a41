"""The published LegSegNet weights' input contract, reproduced bit for bit (see docs/method.md).

The published model was trained on 8-bit PNG slices. Its reference code turns an HU slice into the
network's input in three steps, each reproduced here exactly:

1. `hu_to_uint8`: clip to [-200, 200], scale to 0..255 in float32 and cast by truncation, with the
   reference code's float32 operation order (`(x - lo) / (hi - lo) * 255`).
2. `resize_to_model`: the reference code's `cv2.resize(..., interpolation=INTER_CUBIC)` to 256 x 256.
   With OpenCV installed it is called itself. Without it, `resize_cubic_uint8` is a numpy port of
   OpenCV's own 8-bit cubic code, equal to it bit for bit: Keys' kernel with a = -0.75, half-pixel
   centres, replicated borders, 11-bit fixed-point horizontal weights, and OpenCV's vertical pass
   (float32 multiply-adds with round-half-even on whole groups of 8 output columns, its integer path
   with round-half-up on the remaining columns), saturated to 0..255. (OpenCV's x86 wheels hand this to
   Intel IPP, which agrees on exact ratios such as 512 -> 256 and differs by one grey level on a few
   percent of pixels otherwise.)
3. nnU-Net's own preprocessor (crop to the non-zero box, normalisation from the plans) on the float32
   (1, 1, 256, 256) image with spacing (999, 1, 1): done by the engine with nnU-Net's classes.

Everything works on stacks of slices (n, rows, cols) at once; no per-pixel Python loops.
"""

from __future__ import annotations

import numpy as np

HU_LO = -200.0
HU_HI = 200.0
IMAGE_SIZE = 256  # the published model's input is 256 x 256
SPACING = (999.0, 1.0, 1.0)  # the spacing nnU-Net sees for a 2D natural image

# OpenCV's fixed-point resize constants (imgproc/src/resize.cpp)
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS
_CUBIC_A = np.float32(-0.75)
# OpenCV's vertical pass for 8-bit output runs in SIMD groups of 8 columns (128-bit baseline)
_SIMD_COLUMNS = 8


def hu_to_uint8(hu: np.ndarray) -> np.ndarray:
    """The reference code's HU window: float32 clip to [-200, 200], scale to 0..255, truncate to uint8."""
    x = np.clip(np.asarray(hu).astype(np.float32), np.float32(HU_LO), np.float32(HU_HI))
    x = (x - np.float32(HU_LO)) / np.float32(HU_HI - HU_LO)
    x = x * np.float32(255.0)
    return x.astype(np.uint8)


def _cubic_coefficients(fraction: np.ndarray) -> np.ndarray:
    """OpenCV's interpolateCubic in float32, one row of 4 weights per fraction; shape (n, 4)."""
    A = _CUBIC_A
    one = np.float32(1.0)
    x = fraction.astype(np.float32)
    xp1 = x + one
    c0 = ((A * xp1 - np.float32(5) * A) * xp1 + np.float32(8) * A) * xp1 - np.float32(4) * A
    c1 = ((A + np.float32(2)) * x - (A + np.float32(3))) * x * x + one
    omx = one - x
    c2 = ((A + np.float32(2)) * omx - (A + np.float32(3))) * omx * omx + one
    c3 = one - c0 - c1 - c2
    return np.stack([c0, c1, c2, c3], axis=1)


def _axis_taps(src_len: int, dst_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (dst_len, 4), clamped to the image (border replicate), and 11-bit integer weights."""
    scale = 1.0 / (float(dst_len) / float(src_len))  # OpenCV: scale = 1 / inv_scale, in double
    position = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.int64)
    fraction = position - start.astype(np.float32)
    weights = _cubic_coefficients(fraction) * np.float32(_COEF_SCALE)
    # saturate_cast<short>(float): round half to even (cvRound), then clamp to int16
    int_weights = np.clip(np.rint(weights), -32768, 32767).astype(np.int32)
    taps = np.clip(start[:, None] + np.arange(-1, 3)[None, :], 0, src_len - 1)
    return taps, int_weights


def resize_cubic_uint8(images: np.ndarray, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """OpenCV `cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)` for uint8, bit for bit.

    `images` is one image (rows, cols) or a stack (n, rows, cols); `size` is (rows, cols) of the result
    (note: OpenCV's dsize is (width, height)). Same-size input is returned as a copy, as OpenCV does.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"resize_cubic_uint8 wants uint8 images, not {images.dtype}")
    single = images.ndim == 2
    stack = images[None] if single else images
    n, src_rows, src_cols = stack.shape
    dst_rows, dst_cols = int(size[0]), int(size[1])
    if (src_rows, src_cols) == (dst_rows, dst_cols):
        out = stack.copy()
        return out[0] if single else out

    # horizontal pass: exact integer sums (uint8 x int16 weights), as OpenCV's HResizeCubic
    col_taps, col_weights = _axis_taps(src_cols, dst_cols)
    horizontal = np.zeros((n, src_rows, dst_cols), dtype=np.int32)
    for k in range(4):
        horizontal += stack[:, :, col_taps[:, k]].astype(np.int32) * col_weights[:, k]

    # vertical pass on the needed rows only
    row_taps, row_weights = _axis_taps(src_rows, dst_rows)
    rows = [horizontal[:, row_taps[:, k], :] for k in range(4)]  # each (n, dst_rows, dst_cols) int32
    out = np.empty((n, dst_rows, dst_cols), dtype=np.uint8)

    simd_cols = (dst_cols // _SIMD_COLUMNS) * _SIMD_COLUMNS
    if simd_cols:
        # VResizeCubicVec_32s8u: float32 sum S0*b0 + (S1*b1 + (S2*b2 + S3*b3)), b = beta / 2^22, round half even
        scale = np.float32(1.0 / (_COEF_SCALE * _COEF_SCALE))
        b = [(row_weights[:, k].astype(np.float32) * scale)[None, :, None] for k in range(4)]
        s = [r[:, :, :simd_cols].astype(np.float32) for r in rows]
        value = s[0] * b[0] + (s[1] * b[1] + (s[2] * b[2] + s[3] * b[3]))
        out[:, :, :simd_cols] = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    if simd_cols < dst_cols:
        # VResizeCubic with FixedPtCast<int, uchar, 22>: integer sum, + 2^21, arithmetic shift right by 22
        acc = np.zeros((n, dst_rows, dst_cols - simd_cols), dtype=np.int64)
        for k in range(4):
            acc += rows[k][:, :, simd_cols:].astype(np.int64) * row_weights[:, k][None, :, None]
        shift = 2 * _COEF_BITS
        out[:, :, simd_cols:] = np.clip((acc + (1 << (shift - 1))) >> shift, 0, 255).astype(np.uint8)
    return out[0] if single else out


def _opencv():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def resize_backend() -> str:
    """Which implementation `resize_to_model` uses (recorded in metrics.json)."""
    cv2 = _opencv()
    if cv2 is None:
        return "numpy port of OpenCV INTER_CUBIC"
    return f"OpenCV {cv2.__version__} INTER_CUBIC"


def resize_to_model(images: np.ndarray) -> np.ndarray:
    """uint8 (n, rows, cols) → (n, 256, 256) exactly as the reference code's `cv2.resize(INTER_CUBIC)`.

    With OpenCV installed this calls it, so the result is the reference code's on this machine, whatever
    OpenCV's build does (x86 wheels hand 8-bit cubic resizing to Intel IPP, which rounds differently from
    OpenCV's own code by one grey level on a few percent of pixels, except for exact ratios such as
    512 -> 256). Without OpenCV, the numpy port of OpenCV's own algorithm is used.
    """
    images = np.asarray(images)
    cv2 = _opencv()
    if cv2 is None:
        return resize_cubic_uint8(images, (IMAGE_SIZE, IMAGE_SIZE))
    out = np.empty((images.shape[0], IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for k, image in enumerate(images):
        out[k] = cv2.resize(np.ascontiguousarray(image), (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
    return out


def published_input_images(hu_slices: np.ndarray) -> np.ndarray:
    """HU slices (n, rows, cols) → the uint8 256 x 256 images the published model was trained on."""
    return resize_to_model(hu_to_uint8(hu_slices))
