"""A synthetic lower-leg CT with exact labels: the project's ground truth for engines, tests and the Slicer self-test.

`make_leg_phantom` draws the axial cross-sections of one or two legs (calf or thigh), resting on a CT couch, from an
analytic model in millimetres, and renders them with partial volume and noise:

- Each slice is evaluated on a 3 x 3 supersampled grid. The HU of a voxel is the mean of its 9 subsamples (partial
  volume in-plane; the model changes slowly along z, so there is no through-plane partial volume). The label of a voxel
  is the tissue at its *analytic centre* (the middle subsample), i.e. what an annotator drawing on the exact anatomy
  would give it.
- The scanner's blur: a Gaussian point-spread function (`blur_mm` sigma) on the rendered HU.
- Noise: Gaussian, spatially correlated over about one voxel (like filtered back-projection), `noise_hu` standard
  deviation per voxel. HU are stored as int16, like real CT.
- Labels follow docs/method.md: skin (1-2 voxels) and superficial veins are SAT; the deep fascia, the vessels of
  the muscle compartment and calcifications in their walls are SM; septal fat, inter-group fat pockets (including the
  popliteal fossa) and intramuscular fat blobs are IAT; cortex plus marrow is Bone; couch, pad, air and air trapped
  between touching legs are background.

Anatomy per region (sizes vary with `seed`; the first slice is the superior end of the segment):
- calf: tibia (anteromedial, triangular, trabecular marrow near the knee, fatty below) and fibula (posterolateral);
  anterior, lateral, deep and superficial posterior compartments separated by septa; anterior tibial, posterior tibial
  and peroneal arteries with paired veins; great and small saphenous veins in the SAT; the gastrocnemius heads and the
  popliteal fat at the superior end; the leg tapers toward the ankle.
- thigh: femur with linea aspera (metaphysis and trabecular marrow toward the knee); quadriceps, adductor and
  hamstring groups; femoral vessels in a fat pocket (adductor canal), deep femoral vessels; popliteal fossa fat at
  the inferior end.

`difficulty="hard"` adds what real scans of elderly patients show and the easy phantom leaves out (each with exact
labels; the easy phantom is unchanged):
- bone near the joint (the proximal tibia and fibula, the distal femur) is osteoporotic: a thin, less dense cortex
  with pores and gaps of 3-10 mm running 4-15 mm along the bone, where the textured trabecular marrow (mean 0-150 HU,
  overlapping muscle) touches the muscle directly; the gaps are Bone, like the marrow;
- the legs lie on a gel positioning pad (soft-tissue HU, background) into which they sink, and are pressed together
  (a long contact);
- clothing (a 1-2.5 mm layer of -320..-180 HU, background) lies on the skin over the front and outer side;
- fatty infiltration of one muscle group: fine fat streaks (IAT) in lower-attenuating muscle;
- a contrast-filled artery (300-420 HU, SM) runs along the bone touching its cortex;
- through-plane partial volume: each slice's HU is the mean over three sub-slices across its thickness (the label is
  still the tissue at the voxel's centre).

Geometry of `to_volume()`: slab rows run toward the patient's posterior (the couch is at the bottom of the image),
columns toward the patient's LEFT, slices toward the feet. So the leg with the larger column index is the patient's
left leg; `Phantom.sides` says which leg id is which side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .core import tissues
from .scan.ct_volume import CTVolume

# ITK direction (row-major 3x3, column a = LPS direction of index axis a): i (slab rows) -> posterior,
# j (slab columns) -> patient left, k (slices) -> inferior. Right-handed (determinant +1).
PHANTOM_DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)

# Tissue codes of the model (finer than labels, so that HU and label are looked up per code).
AIR, PAD, SHELL, SKIN, SAT_FAT, SUP_VEIN, FASCIA, MUSCLE = 0, 1, 2, 3, 4, 5, 6, 7
SEPTUM_FAT, POCKET_FAT, MARBLING, ARTERY, VEIN, CALCIFICATION, CORTEX, MARROW, AIR_POCKET, SAT_STRAND = range(8, 18)
GEL, CLOTH = 18, 19  # the hard phantom's positioning gel pad and clothing (background)
N_CODES = 20

CODE_LABEL = np.zeros(N_CODES, dtype=np.uint8)
CODE_LABEL[[SKIN, SAT_FAT, SUP_VEIN, SAT_STRAND]] = tissues.SAT
CODE_LABEL[[FASCIA, MUSCLE, ARTERY, VEIN, CALCIFICATION]] = tissues.SM
CODE_LABEL[[SEPTUM_FAT, POCKET_FAT, MARBLING]] = tissues.IAT
CODE_LABEL[[CORTEX, MARROW]] = tissues.BONE

SUPERSAMPLE = 3  # subsamples per voxel edge; odd, so the middle subsample is the voxel centre
DEFAULT_FOV_MM = {"calf": 300.0, "thigh": 420.0}  # field of view across the columns when spacing is not given
DEFAULT_SLICE_MM = 5.0
DIFFICULTIES = ("easy", "hard")
THROUGH_PLANE_SUBSLICES = 3  # hard phantom: sub-slices averaged per slice (odd: the middle one is the centre)


@dataclass
class Phantom:
    hu: np.ndarray  # int16 (slices, rows, cols), Hounsfield units
    labels: np.ndarray  # uint8, same shape: 0 background, 1 SAT, 2 SM, 3 IAT, 4 Bone
    leg_ids: np.ndarray  # uint8, same shape: 0 outside the legs, 1..k one id per leg, ordered by column
    spacing: tuple[float, float, float]  # (slice, row, column) in mm
    region: str
    sides: dict[str, int]  # patient side -> leg id, e.g. {"right": 1, "left": 2}
    params: dict = field(default_factory=dict)  # what was drawn (for reports and debugging)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.hu.shape  # type: ignore[return-value]

    def to_volume(self) -> tuple[CTVolume, sitk.Image]:
        """The phantom as a `CTVolume` (geometry: see the module docstring) and its label image on the same grid."""
        sz, sr, sc = self.spacing
        n, rows, cols = self.hu.shape
        # LPS position of voxel (i=row, j=col, k=slice) = origin + (j*sc, i*sr, -k*sz): centred in-plane.
        origin = (-(cols - 1) * sc / 2.0, -(rows - 1) * sr / 2.0, 500.0 + (n - 1) * sz)
        volume = CTVolume.from_array(
            np.ascontiguousarray(self.hu.transpose(0, 2, 1)),  # SimpleITK order (k, j, i)
            spacing_xyz=(sr, sc, sz),
            origin_xyz=origin,
            direction=PHANTOM_DIRECTION,
            source=f"<phantom {self.region}>",
        )
        return volume, volume.labels_to_image(self.labels)


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class _Leg:
    """One leg's model. Arrays are per slice. Local frame: u toward the leg's lateral side, v posterior (mm)."""

    side: str
    lateral_sign: float  # +1: lateral is +x (columns increasing), i.e. the patient's left leg
    cx: np.ndarray  # centre, column direction (mm)
    cy: np.ndarray  # centre, row direction (mm)
    rot: float  # rotation of the local frame (rad); mirrored between the legs
    ru: np.ndarray  # skin semi-axis, lateral-medial (mm)
    rv: np.ndarray  # skin semi-axis, anterior-posterior (mm)
    shape_harm: list[tuple[int, float, float]]  # (order, relative amplitude, phase) of the skin outline
    skin_mm: float
    sat_mm: np.ndarray  # mean SAT thickness including the skin (mm)
    sat_harm: list[tuple[int, float, float]]
    sat_thin_angle: float  # where the SAT is thinnest (over the anteromedial tibia in the calf)
    muscle_hu: float
    muscle_harm: tuple[float, float]  # smooth variation of muscle HU around the leg (amplitude, phase)
    sat_hu: float
    per_slice: list[list[tuple]] = field(default_factory=list)  # shapes painted in slice k
    blobs: list[tuple] = field(default_factory=list)  # intramuscular fat: (k_first, k_last, angle, ...)
    air_pockets: list[tuple] = field(default_factory=list)
    sat_strands: list[tuple] = field(default_factory=list)  # (depth fraction, first angle, last angle, width)
    infiltration: list[tuple] = field(default_factory=list)  # hard: fatty muscle (centre, a, b, orient, waves, level)
    clothing: tuple | None = None  # hard: (first angle, last angle, thickness mm) of the clothing on the skin
    slice_mm: float = 0.0  # the model's slice spacing (textures that change along z)

    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        a = self.rot * self.lateral_sign
        e_u = np.array([self.lateral_sign * np.cos(a), np.sin(a)])  # (x, y) of the lateral direction
        e_v = np.array([-self.lateral_sign * np.sin(a), np.cos(a)])  # (x, y) of the posterior direction
        return e_u, e_v

    def to_local(self, k: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e_u, e_v = self.frame()
        dx, dy = x - self.cx[k], y - self.cy[k]
        return dx * e_u[0] + dy * e_u[1], dx * e_v[0] + dy * e_v[1]

    def to_global(self, k: int, u: float, v: float) -> tuple[float, float]:
        e_u, e_v = self.frame()
        return self.cx[k] + u * e_u[0] + v * e_v[0], self.cy[k] + u * e_u[1] + v * e_v[1]

    def skin_radius(self, k: int, theta):
        ru, rv = self.ru[k], self.rv[k]
        r = ru * rv / np.sqrt((rv * np.cos(theta)) ** 2 + (ru * np.sin(theta)) ** 2)
        wobble = 1.0
        for order, amp, phase in self.shape_harm:
            wobble = wobble + amp * np.cos(order * theta - phase)
        return r * wobble

    def sat_thickness(self, k: int, theta):
        f = 1.0
        for order, amp, phase in self.sat_harm:
            f = f + amp * np.cos(order * theta - phase)
        # thin where bone lies under the skin, smoothly
        f = f * (1.0 - 0.6 * np.exp(-((_wrap(theta - self.sat_thin_angle) / 0.45) ** 2)))
        return np.maximum(self.sat_mm[k] * f, self.skin_mm + 1.8)

    def fascia_radius(self, k: int, theta: float) -> float:
        return float(self.skin_radius(k, theta) - self.sat_thickness(k, theta))

    def radial_profiles(self, k: int, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Skin radius and SAT thickness at angles `theta`, looked up in a fine table (cheap on big grids)."""
        table = _ANGLES
        idx = np.rint((theta + np.pi) * (len(table) / (2 * np.pi))).astype(np.intp) % len(table)
        return self.skin_radius(k, table)[idx], self.sat_thickness(k, table)[idx]


FASCIA_MM = 1.0  # thickness of the deep fascia line
_ANGLES = np.linspace(-np.pi, np.pi, 8192, endpoint=False)  # lookup table: 0.8 mrad steps, << 0.1 mm at the skin


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _profile(t: np.ndarray, start: float, end: float, rng: np.random.Generator, wiggle: float) -> np.ndarray:
    """A value going smoothly from `start` to `end` along the segment, with a gentle random wiggle."""
    phase = rng.uniform(0, 2 * np.pi)
    return start + (end - start) * (3 * t**2 - 2 * t**3) + wiggle * np.sin(np.pi * t + phase) * (start + end) / 2


# ---------------------------------------------------------------------------------------------------- API
def make_leg_phantom(
    shape: tuple[int, int, int] = (24, 192, 256),
    spacing: tuple[float, float, float] | None = None,
    seed: int = 0,
    region: str = "calf",
    touching: bool = False,
    one_leg: str | None = None,
    contrast_vessels: bool = True,
    couch: bool = True,
    noise_hu: float = 12.0,
    blur_mm: float = 0.5,
    calcifications: bool = True,
    air_pockets: bool = True,
    marbling: float = 1.0,
    difficulty: str = "easy",
) -> Phantom:
    """Draw a leg phantom. `spacing` (slice, row, column) mm defaults to a region-typical field of view.

    touching: the medial skins overlap and merge (continuous SAT between the legs; with `air_pockets`, small air
    pockets trapped in the crease). one_leg: "left" or "right" keeps only that leg (amputation). contrast_vessels:
    arteries at ~300 HU instead of ~40. calcifications: small arterial wall calcifications (~900 HU, label SM).
    marbling: scales the amount of intramuscular fat (0 = none). blur_mm: the scanner's in-plane point-spread
    function (Gaussian sigma, mm; ~0.5 mm for a standard soft-tissue kernel), applied before the noise.
    difficulty: "easy" or "hard" (see the module docstring: osteoporotic gapped cortex, gel pad, clothing, fatty
    infiltration, an artery on the cortex, through-plane partial volume). The same seed draws the same legs.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, not {difficulty!r}")
    if region not in ("calf", "thigh"):
        raise ValueError(f"region must be 'calf' or 'thigh', not {region!r}")
    if one_leg not in (None, "left", "right"):
        raise ValueError(f"one_leg must be None, 'left' or 'right', not {one_leg!r}")
    n, rows, cols = (int(s) for s in shape)
    if n < 1 or rows < 32 or cols < 32:
        raise ValueError(f"phantom shape {shape} is too small (need >= 1 slice and >= 32 x 32 pixels)")
    if spacing is None:
        pix = DEFAULT_FOV_MM[region] / cols
        spacing = (DEFAULT_SLICE_MM, pix, pix)
    sz, sr, sc = (float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    # the hard phantom's own draws come from a second generator, so the easy one stays exactly as it was
    hard = np.random.default_rng([seed, 1]) if difficulty == "hard" else None
    zsub = THROUGH_PLANE_SUBSLICES if hard is not None else 1
    if zsub > 1:  # the model is drawn at sub-slices across each slice's thickness
        span = (n - 1) * sz if n > 1 else 120.0
        offsets = (np.arange(zsub) - (zsub - 1) / 2) * (sz / zsub) / span
        t = (t[:, None] + offsets[None, :]).ravel()
    n_model, sz_model = n * zsub, sz / zsub

    legs, pad_top = _make_legs(region, t, rng, touching, rows * sr, cols * sc, pressed=hard is not None)
    for leg in legs:
        _add_anatomy(leg, region, t, rng, contrast_vessels, calcifications, marbling, sz_model, hard)
    if touching and air_pockets and one_leg is None:
        for _ in range(3):
            length = rng.uniform(8.0, 30.0) / sz_model
            k0 = rng.uniform(0, n_model - 1)
            end = rng.choice([-1.0, 1.0])  # anterior or posterior end of the contact line
            legs[0].air_pockets.append((k0 - length / 2, k0 + length / 2, end, rng.uniform(0.8, 1.6)))
    kept = [leg for leg in legs if one_leg is None or leg.side == one_leg]
    air_pocket_list = legs[0].air_pockets if len(kept) == 2 else []

    hu_table = _hu_table(contrast_vessels)
    if hard is not None and couch:  # the legs sink a few mm into a gel pad lying on the foam mattress
        gel_top = pad_top + 1.5 - hard.uniform(3.0, 6.0)
        foam_top = gel_top + hard.uniform(10.0, 20.0)
        hu_table[GEL] = hard.uniform(20.0, 70.0)
        background = _couch_codes(rows, cols, sr, sc, foam_top, rng)
        y = _sub_coords(rows, sr)
        gel_rows = (y >= gel_top) & (y < foam_top)
        background[gel_rows] = np.where(background[gel_rows] == AIR, GEL, background[gel_rows])
    else:
        background = _couch_codes(rows, cols, sr, sc, pad_top, rng) if couch else None
    if hard is not None:
        hu_table[CLOTH] = hard.uniform(-320.0, -180.0)
        if contrast_vessels:
            hu_table[ARTERY] = hard.uniform(300.0, 420.0)
    hu = np.empty((n, rows, cols), dtype=np.int16)
    labels = np.empty((n, rows, cols), dtype=np.uint8)
    leg_ids = np.zeros((n, rows, cols), dtype=np.uint8)
    order = sorted(range(len(kept)), key=lambda i: float(kept[i].cx.mean()))  # ids ordered by column
    id_of = np.zeros(len(kept) + 1, dtype=np.uint8)
    for new_id, i in enumerate(order, start=1):
        id_of[i + 1] = new_id
    for k in range(n):
        parts = []
        for s in range(zsub):  # through-plane partial volume; the label is the middle sub-slice's (the centre's)
            hu_s, codes_s, owner_s = _render_slice(
                k * zsub + s, kept, background, (rows, cols), hu_table, sr, sc, air_pocket_list
            )
            parts.append(hu_s)
            if s == zsub // 2:
                labels[k] = CODE_LABEL[codes_s]
                leg_ids[k] = id_of[owner_s]
        hu_k = parts[0] if zsub == 1 else np.mean(parts, axis=0, dtype=np.float32)
        if blur_mm > 0:
            hu_k = ndi.gaussian_filter(hu_k, (blur_mm / sr, blur_mm / sc), mode="nearest")
        noise = _correlated_noise(rng, (rows, cols), noise_hu)
        hu[k] = np.clip(np.rint(hu_k + noise), -1024, 3071).astype(np.int16)
    leg_ids[labels == 0] = 0
    sides = {kept[i].side: new_id for new_id, i in enumerate(order, start=1)}
    params = {
        "region": region,
        "seed": seed,
        "touching": touching,
        "one_leg": one_leg,
        "contrast_vessels": contrast_vessels,
        "couch": couch,
        "noise_hu": noise_hu,
        "blur_mm": blur_mm,
        "difficulty": difficulty,
        "label_rule": "tissue at the voxel's analytic centre",
        "supersample": SUPERSAMPLE,
        "slice_order": "superior to inferior",
    }
    return Phantom(
        hu=hu, labels=labels, leg_ids=leg_ids, spacing=(sz, sr, sc), region=region, sides=sides, params=params
    )


# ---------------------------------------------------------------------------------------------------- anatomy
def _make_legs(
    region: str,
    t: np.ndarray,
    rng: np.random.Generator,
    touching: bool,
    height_mm: float,
    width_mm: float,
    pressed: bool = False,
) -> tuple[list[_Leg], float]:
    if region == "calf":  # from below the knee (t=0) toward the ankle (t=1)
        r_start, r_end, sat_mean = rng.uniform(48, 56), rng.uniform(38, 44), rng.uniform(6.0, 11.0)
    else:  # from mid-thigh (t=0) toward the knee (t=1)
        r_start, r_end, sat_mean = rng.uniform(74, 84), rng.uniform(60, 66), rng.uniform(10.0, 17.0)
    legs: list[_Leg] = []
    for side, lateral_sign in (("right", -1.0), ("left", 1.0)):
        scale = rng.uniform(0.96, 1.04)  # left/right asymmetry
        r = _profile(t, r_start * scale, r_end * scale, rng, 0.02)
        aspect = rng.uniform(0.88, 0.97) if region == "thigh" else rng.uniform(0.9, 1.0)
        legs.append(
            _Leg(
                side=side,
                lateral_sign=lateral_sign,
                cx=np.zeros_like(t),
                cy=np.zeros_like(t),
                rot=rng.uniform(-0.18, 0.18),
                ru=r,
                rv=r * aspect,
                shape_harm=[
                    (2, rng.uniform(-0.04, 0.04), rng.uniform(0, np.pi)),
                    (3, rng.uniform(0.0, 0.03), rng.uniform(0, 2 * np.pi)),
                    (4, rng.uniform(0.0, 0.015), rng.uniform(0, 2 * np.pi)),
                ],
                skin_mm=rng.uniform(1.4, 2.0),
                sat_mm=sat_mean * scale * _profile(t, 1.0, rng.uniform(0.8, 1.1), rng, 0.05),
                sat_harm=[
                    (1, rng.uniform(0.15, 0.35), np.pi / 2 + rng.uniform(-0.6, 0.6)),
                    (2, rng.uniform(0.05, 0.2), rng.uniform(0, np.pi)),
                ],
                sat_thin_angle=-2.0 if region == "calf" else -1.4,
                muscle_hu=rng.uniform(38, 52),
                muscle_harm=(rng.uniform(2, 6), rng.uniform(0, 2 * np.pi)),
                sat_hu=rng.uniform(-112, -98),
            )
        )
    # side by side along the columns, resting on the pad
    mid = width_mm / 2 + rng.uniform(-0.03, 0.03) * width_mm
    medial = np.array([[leg.skin_radius(k, np.pi) for k in range(len(t))] for leg in legs])
    if touching:
        overlap = rng.uniform(6.0, 9.0)  # the medial skins press into each other
        if pressed:  # hard phantom: pressed together, a long contact
            overlap *= 2.0
        for leg, r_med in zip(legs, medial):
            leg.cx = mid + leg.lateral_sign * (r_med - overlap / 2)
    else:
        gap = rng.uniform(12.0, 40.0)
        for leg, r_med in zip(legs, medial):
            leg.cx = np.full_like(t, mid + leg.lateral_sign * (r_med.max() + gap / 2))
    posterior = max(leg.skin_radius(k, np.pi / 2) for leg in legs for k in range(len(t)))
    anterior = max(leg.skin_radius(k, -np.pi / 2) for leg in legs for k in range(len(t)))
    cy = 0.07 * height_mm + anterior
    for leg in legs:
        leg.cy = np.full_like(t, cy + rng.uniform(-1.0, 1.0))
    pad_top = cy + posterior - 1.5  # the legs sink into the pad
    for leg in legs:
        extent = float(np.max(leg.ru)) * 1.12
        if leg.cx.min() - extent < 0 or leg.cx.max() + extent > width_mm or pad_top + 2 > height_mm:
            raise ValueError(
                f"the {region} phantom does not fit a {height_mm:.0f} x {width_mm:.0f} mm field of view; "
                "use more pixels or a larger pixel spacing"
            )
    return legs, pad_top


def _add_anatomy(
    leg: _Leg,
    region: str,
    t: np.ndarray,
    rng: np.random.Generator,
    contrast: bool,
    calcifications: bool,
    marbling: float,
    sz: float,
    hard: np.random.Generator | None = None,
) -> None:
    """Fill `leg.per_slice` with the shapes inside the leg (local frame, mm) and `leg.blobs` with marbling.

    With `hard` (the hard phantom's generator) bones near the joint get `_BoneDefects`, and the leg gets fatty
    infiltration, clothing and an artery lying on the cortex.
    """
    n = len(t)
    leg.slice_mm = sz
    defects = _HardBones(hard, region, t, sz) if hard is not None else None

    def polar(k: int, angle: float, frac: float) -> tuple[float, float]:
        rho = leg.fascia_radius(k, angle) * frac
        return rho * np.cos(angle), rho * np.sin(angle)

    def fascia_point(k: int, angle: float, inside_mm: float = 0.0, beyond: float = 4.0) -> tuple[float, float]:
        rho = leg.fascia_radius(k, angle) - inside_mm + beyond
        return rho * np.cos(angle), rho * np.sin(angle)

    for _ in range(int(rng.integers(1, 4))):  # fibrous strands in the SAT, roughly parallel to the skin
        a0 = rng.uniform(-np.pi, np.pi)
        leg.sat_strands.append((rng.uniform(0.3, 0.7), a0, a0 + rng.uniform(0.5, 1.8), rng.uniform(0.5, 0.9)))
    calc_vessel = 0  # which vessel bundle gets a calcification (posterior tibial, femoral)
    calc_k = int(rng.integers(0, n)) if calcifications else -10
    calc_angle = rng.uniform(0, 2 * np.pi)
    jitter = rng.uniform(-0.08, 0.08, size=12)  # this leg's variation of septum and vessel angles
    bends = rng.uniform(-4.0, 4.0, size=12)  # septa are gently curved, not straight
    for k in range(n):
        shapes: list[tuple] = []
        if region == "calf":
            trab = float(np.clip(1.0 - t[k] / 0.35, 0.0, 1.0))  # trabecular marrow toward the knee
            tib_r = 12.5 + 6.0 * trab**1.5 + jitter[0] * 8
            tib_ang = -2.0 + jitter[1]
            rho_t = leg.fascia_radius(k, tib_ang) - tib_r * 1.13 - 1.5
            tib = (rho_t * np.cos(tib_ang), rho_t * np.sin(tib_ang))
            fib_r = 6.5 + 1.0 * trab + jitter[2] * 5
            fib = polar(k, 0.35 + jitter[3], 0.52)
            if defects is None:
                shapes.append(("bone", tib, tib_r, 4.5 * (1 - trab) + 1.6 * trab, 3, 0.13, tib_ang + np.pi, trab))
                shapes.append(("bone", fib, fib_r, 2.2, 3, 0.1, 0.35, trab))
            else:  # osteoporotic near the knee: thinner cortex, gaps, textured marrow; an artery on the tibia
                shapes.append(
                    (
                        "bone",
                        tib,
                        tib_r,
                        4.5 * (1 - trab) + 0.9 * trab,
                        3,
                        0.13,
                        tib_ang + np.pi,
                        trab,
                        defects.at("tibia", k, trab),
                    )
                )
                shapes.append(
                    (
                        "bone",
                        fib,
                        fib_r,
                        2.2 * (1 - trab) + 0.9 * trab,
                        3,
                        0.1,
                        0.35,
                        trab,
                        defects.at("fibula", k, trab),
                    )
                )
                if t[k] < defects.artery_extent:
                    shapes.append(defects.artery_on(tib, tib_r, 3, 0.13, tib_ang + np.pi))
            back = polar(k, 1.75 + jitter[4], 0.42)
            shapes.append(("septum", fib, fascia_point(k, -0.75 + jitter[5]), 1.8))  # anterior intermuscular
            shapes.append(("septum", fib, fascia_point(k, 1.05 + jitter[6]), 1.8))  # posterior intermuscular
            shapes.append(("septum", fib, back, 1.6))  # transverse septum
            shapes.append(("septum", back, (tib[0] + 4.0, tib[1] + 10.0), 1.6))
            heads = t[k] < 0.75  # gastrocnemius over the soleus, two heads
            if heads:
                shapes.append(("septum", polar(k, 0.9, 0.72), polar(k, 2.5, 0.7), 1.5))
                shapes.append(("septum", polar(k, 1.65, 0.7), fascia_point(k, 1.6), 1.5))
            shapes.append(("wedge", -0.75 + jitter[5], 5.0, 3.0))
            shapes.append(("wedge", 1.05 + jitter[6], 6.0, 3.5))
            shapes.append(("wedge", 1.6 if heads else 2.3, 5.0, 3.0))
            bundles = [
                polar(k, 1.95 + jitter[7], 0.45),  # posterior tibial
                ((tib[0] + fib[0]) / 2 - 3.0, (tib[1] + fib[1]) / 2 - 5.0),  # anterior tibial
                polar(k, 0.9 + jitter[8], 0.42),
            ]  # peroneal
            shapes.append(("pocket", bundles[0], 5.5, 3.5, 0.5))
            shapes.append(("pocket", bundles[1], 3.5, 2.5, -0.7))
            shapes.append(("pocket", bundles[2], 3.5, 2.5, 0.3))
            for i, (centre, ra, rvein) in enumerate(zip(bundles, (1.7, 1.3, 1.3), (1.5, 1.2, 1.2))):
                calc = calc_angle if (i == calc_vessel and abs(k - calc_k) <= 1) else None
                shapes.append(("vessels", centre, ra, rvein, calc))
            if t[k] < 0.3:  # popliteal fat between the gastrocnemius heads, with the popliteal vessels
                depth = 22.0 * (1 - t[k] / 0.3) + 4.0
                shapes.append(("wedge", 1.62, depth, 9.0 * (1 - t[k] / 0.3) + 3.0))
                shapes.append(("vessels", fascia_point(k, 1.62, depth * 0.55, 0.0), 2.6, 2.5, None))
            shapes.append(("supvein", 2.75 + jitter[9], 0.5, 1.8))  # great saphenous
            shapes.append(("supvein", 1.5 + jitter[10], 0.45, 1.4))  # small saphenous
        else:
            trab = float(np.clip((t[k] - 0.65) / 0.35, 0.0, 1.0))  # metaphysis toward the knee
            fem_r = 14.0 + jitter[0] * 10 + 12.0 * trab**2
            fem = polar(k, -0.5, 0.12)
            if defects is None:
                shapes.append(("bone", fem, fem_r, 6.0 * (1 - trab) + 1.8 * trab, 1, 0.0, 0.0, trab))
            else:
                shapes.append(
                    ("bone", fem, fem_r, 6.0 * (1 - trab) + 1.0 * trab, 1, 0.0, 0.0, trab, defects.at("femur", k, trab))
                )
                if t[k] > 1.0 - defects.artery_extent:
                    shapes.append(defects.artery_on(fem, fem_r, 1, 0.0, 0.0))
            la = (fem[0], fem[1] + fem_r - 1.0)  # linea aspera
            shapes.append(("bone", la, 4.0 * (1 - trab) + 0.5, 3.0, 1, 0.0, 0.0, 0.0))
            shapes.append(("septum", la, fascia_point(k, 0.45 + jitter[1]), 2.0))  # lateral intermuscular
            shapes.append(("septum", fem, fascia_point(k, -2.45 + jitter[2]), 2.0))  # medial intermuscular
            shapes.append(("septum", la, fascia_point(k, 2.2 + jitter[3]), 2.0))  # posterior intermuscular
            shapes.append(("septum", polar(k, -1.2, 0.45), polar(k, -2.1, 0.48), 1.6))  # rectus femoris
            shapes.append(("septum", polar(k, -0.2, 0.3), fascia_point(k, -0.55), 1.5))  # vastus lateralis
            shapes.append(("septum", la, fascia_point(k, 1.4 + jitter[4]), 1.6))  # biceps / semimembranosus
            shapes.append(("wedge", 0.45 + jitter[1], 6.0, 4.0))
            shapes.append(("wedge", -2.45 + jitter[2], 7.0, 4.0))
            shapes.append(("wedge", 2.2 + jitter[3], 6.0, 3.5))
            shapes.append(("wedge", 1.4 + jitter[4], 5.0, 3.0))
            bundles = [polar(k, -2.75 + jitter[5], 0.52), polar(k, 2.0 + jitter[6], 0.3)]  # femoral, deep femoral
            shapes.append(("pocket", bundles[0], 8.0, 5.0, 0.4))
            shapes.append(("pocket", bundles[1], 4.0, 3.0, 0.0))
            for i, (centre, ra, rvein) in enumerate(zip(bundles, (3.0, 1.8), (3.8, 1.8))):
                calc = calc_angle if (i == calc_vessel and abs(k - calc_k) <= 1) else None
                shapes.append(("vessels", centre, ra, rvein, calc))
            if t[k] > 0.7:  # popliteal fossa
                g = (t[k] - 0.7) / 0.3
                depth = 6.0 + 26.0 * g
                shapes.append(("wedge", 1.75, depth, 5.0 + 12.0 * g))
                shapes.append(("vessels", fascia_point(k, 1.75, depth * 0.5, 0.0), 2.8, 3.0, None))
            shapes.append(("supvein", 2.9 + jitter[7], 0.5, 2.2))  # great saphenous
        n_septa = 0
        for i, sh in enumerate(shapes):
            if sh[0] == "septum":
                shapes[i] = sh + (bends[n_septa],)
                n_septa += 1
        leg.per_slice.append(shapes)
    if hard is not None:
        angle = hard.uniform(1.3, 2.3)  # one posterior muscle group with fatty infiltration
        leg.infiltration.append(
            (
                angle,
                hard.uniform(0.55, 0.7),
                hard.uniform(14.0, 22.0),
                hard.uniform(8.0, 12.0),
                hard.uniform(0, np.pi),
                _streak_waves(hard),
                0.5,
            )
        )
        a0 = hard.uniform(-2.5, -2.2)  # clothing over the front and the outer side, not between the legs or below
        leg.clothing = (a0, a0 + hard.uniform(2.8, 3.2), hard.uniform(1.2, 2.5))
    # intramuscular fat: small ellipses running 10-45 mm along the fibres
    n_blobs = int(round(marbling * (70 if region == "calf" else 120) * max(1.0, n * sz / 120.0)))
    for _ in range(n_blobs):
        length = rng.uniform(10.0, 45.0) / sz
        k0 = rng.uniform(-length / 2, n - 1 + length / 2)
        leg.blobs.append(
            (
                k0 - length / 2,
                k0 + length / 2,
                rng.uniform(-np.pi, np.pi),
                np.sqrt(rng.uniform(0.05, 0.85)),
                rng.uniform(0.8, 3.0),
                rng.uniform(0.6, 1.6),
                rng.uniform(0, np.pi),
            )
        )


# ---------------------------------------------------------------------------------------------------- hard phantom
FATTY_MUSCLE_SHIFT_HU = 12.0  # muscle between the fat streaks of an infiltrated group attenuates less


@dataclass
class _BoneDefect:
    """An osteoporotic bone cross-section near the joint: cortex HU and texture, marrow HU and texture, gaps."""

    gaps: list[tuple[float, float]]  # (angle around the bone's centre, half the gap's width along the shell in mm)
    cortex_hu: float
    cortex_texture: float
    marrow_hu: float
    marrow_texture: float
    waves: tuple
    z_mm: float


class _HardBones:
    """The hard phantom's bones near the joint (gaps drawn once per leg, so they run along z) and the artery."""

    def __init__(self, rng: np.random.Generator, region: str, t: np.ndarray, sz: float) -> None:
        self.sz = sz
        trab = np.clip(1.0 - t / 0.35, 0.0, 1.0) if region == "calf" else np.clip((t - 0.65) / 0.35, 0.0, 1.0)
        near_joint = np.flatnonzero(trab >= 0.3)
        self.gaps: dict[str, list[tuple]] = {}
        self.waves: dict[str, tuple] = {}
        for bone, count in (("tibia", int(rng.integers(2, 4))), ("fibula", 1), ("femur", int(rng.integers(2, 4)))):
            gaps = []
            for _ in range(count if near_joint.size else 0):
                k_centre = rng.uniform(near_joint[0], near_joint[-1])
                half_length = rng.uniform(2.0, 7.5) / sz  # 4-15 mm along the bone
                gaps.append(
                    (k_centre - half_length, k_centre + half_length, rng.uniform(-np.pi, np.pi), rng.uniform(1.5, 5.0))
                )
            self.gaps[bone] = gaps
            self.waves[bone] = _trabecular_waves(rng)
        self.artery_extent = rng.uniform(0.4, 0.6)  # fraction of the segment, from the joint's end
        self.artery_angle = rng.uniform(-0.3, 0.3) + (np.pi / 2 if region == "calf" else np.pi / 2 + 0.7)
        self.artery_r = rng.uniform(2.2, 3.0)

    def at(self, bone: str, k: int, trab: float) -> _BoneDefect | None:
        if trab <= 0:  # fatty marrow in a thick cortex: as in the easy phantom
            return None
        gaps = [(angle, half) for k0, k1, angle, half in self.gaps[bone] if k0 <= k <= k1]
        return _BoneDefect(
            gaps=gaps,
            cortex_hu=1350.0 - 550.0 * trab,
            cortex_texture=200.0 * trab,
            marrow_hu=-40.0 + 170.0 * trab,
            marrow_texture=25.0 + 90.0 * trab,
            waves=self.waves[bone],
            z_mm=k * self.sz,
        )

    def artery_on(self, centre, r: float, lobes: int, lobe_amp: float, lobe_phase: float) -> tuple:
        """An artery touching the bone (centre, radius r, outline lobes) on its posterior side."""
        a = self.artery_angle
        rb = r * (1 + lobe_amp * np.cos(lobes * (a - lobe_phase))) if lobes > 1 else r
        d = rb + 0.6 * self.artery_r  # overlapping: the bone, painted last, leaves the artery touching it
        return ("artery", (centre[0] + d * np.cos(a), centre[1] + d * np.sin(a)), self.artery_r)


def _trabecular_waves(rng: np.random.Generator, n: int = 8) -> tuple:
    """Plane waves (1.2-2.6 mm in-plane, 3-8 mm along z) whose sum looks like trabecular bone."""
    wavelength, direction = rng.uniform(1.2, 2.6, n), rng.uniform(0, np.pi, n)
    kz = 2 * np.pi / rng.uniform(3.0, 8.0, n) * rng.choice([-1.0, 1.0], n)
    return (
        2 * np.pi / wavelength * np.cos(direction),
        2 * np.pi / wavelength * np.sin(direction),
        kz,
        rng.uniform(0, 2 * np.pi, n),
    )


def _streak_waves(rng: np.random.Generator, n: int = 6) -> tuple:
    """Plane waves across one direction (2.5-5 mm), nearly constant along z: fat streaks between muscle fibres."""
    wavelength, direction = rng.uniform(2.5, 5.0, n), rng.uniform(0, np.pi) + rng.uniform(-0.35, 0.35, n)
    kz = 2 * np.pi / rng.uniform(20.0, 60.0, n)
    return (
        2 * np.pi / wavelength * np.cos(direction),
        2 * np.pi / wavelength * np.sin(direction),
        kz,
        rng.uniform(0, 2 * np.pi, n),
    )


def _wave_field(u: np.ndarray, v: np.ndarray, z_mm: float, waves: tuple) -> np.ndarray:
    """Sum of the plane waves at (u, v, z), scaled to a standard deviation of about 1."""
    kx, ky, kz, phase = waves
    field = np.zeros(np.shape(u), dtype=np.float32)
    for i in range(len(kx)):
        field += np.cos(kx[i] * u + ky[i] * v + (kz[i] * z_mm + phase[i])).astype(np.float32)
    return field * np.float32(np.sqrt(2.0 / len(kx)))


def _paint_infiltration(g: _Grid, codes: np.ndarray) -> np.ndarray:
    """Fat streaks (IAT) in the fatty muscle groups of slice k; returns the groups' region (for the muscle HU)."""
    leg, k = g.leg, g.k
    region = np.zeros(codes.shape, dtype=bool)
    for angle, frac, a, b, orient, waves, level in leg.infiltration:
        rho = leg.fascia_radius(k, angle) * frac
        centre = (rho * np.cos(angle), rho * np.sin(angle))
        w = g.window(centre, max(a, b))
        if w is None:
            continue
        du, dv = g.u[w] - centre[0], g.v[w] - centre[1]
        co, si = np.cos(orient), np.sin(orient)
        inside = (((du * co + dv * si) / a) ** 2 + ((-du * si + dv * co) / b) ** 2 <= 1.0) & (codes[w] == MUSCLE)
        streak = inside & (_wave_field(g.u[w], g.v[w], k * leg.slice_mm, waves) > level)
        codes[w][streak] = MARBLING
        region[w] |= inside
    return region


# ---------------------------------------------------------------------------------------------------- rendering
def _hu_table(contrast: bool) -> np.ndarray:
    table = np.zeros(N_CODES, dtype=np.float32)
    table[[AIR, AIR_POCKET]] = -1000
    table[PAD] = -780  # foam mattress
    table[SHELL] = 300  # carbon-fibre couch shell
    table[SKIN] = 35
    table[SAT_FAT] = -105  # set per leg
    table[SUP_VEIN] = 40
    table[SAT_STRAND] = 20  # fibrous septa of the subcutaneous fat (superficial fascia)
    table[FASCIA] = 65  # dense connective tissue
    table[MUSCLE] = 45  # set per leg and position
    table[SEPTUM_FAT] = -95
    table[POCKET_FAT] = -100
    table[MARBLING] = -92
    table[ARTERY] = 300 if contrast else 42
    table[VEIN] = 40
    table[CALCIFICATION] = 900
    table[CORTEX] = 1350
    table[MARROW] = -60  # set per slice: fatty marrow to trabecular bone
    return table


def _sub_coords(n: int, spacing: float) -> np.ndarray:
    """Positions (mm) of the supersampled grid along one axis; voxel i's centre is at i * spacing."""
    f = SUPERSAMPLE
    return ((np.arange(n * f, dtype=np.float32) - (f - 1) / 2) / f * spacing).astype(np.float32)


def _couch_codes(rows: int, cols: int, sr: float, sc: float, pad_top: float, rng: np.random.Generator) -> np.ndarray:
    """Supersampled codes of the couch under the legs: the foam pad and the curved carbon-fibre shell."""
    y = _sub_coords(rows, sr)[:, None]
    x = _sub_coords(cols, sc)[None, :]
    pad_mm, shell_mm, curve_r = rng.uniform(20, 35), rng.uniform(2.5, 4.0), rng.uniform(700, 1100)
    shell_top = pad_top + pad_mm - (x - cols * sc / 2) ** 2 / (2 * curve_r)  # curving up at the sides
    codes = np.zeros((rows * SUPERSAMPLE, cols * SUPERSAMPLE), dtype=np.uint8)
    codes[np.broadcast_to((y >= pad_top) & (y < shell_top), codes.shape)] = PAD
    codes[np.broadcast_to((y >= shell_top) & (y < shell_top + shell_mm), codes.shape)] = SHELL
    return codes


class _Grid:
    """A window of one slice's supersampled grid in one leg's local frame."""

    def __init__(self, leg: _Leg, k: int, rows: slice, cols: slice, y: np.ndarray, x: np.ndarray, sr: float, sc: float):
        self.leg, self.k, self.rows, self.cols = leg, k, rows, cols
        self.u, self.v = leg.to_local(k, x[None, :], y[:, None])
        self.y0, self.x0 = float(y[0]), float(x[0])
        self.dy, self.dx = sr / SUPERSAMPLE, sc / SUPERSAMPLE
        self.shape = self.u.shape

    def window(self, centre: tuple[float, float], radius: float) -> tuple[slice, slice] | None:
        """Index window of the grid holding the disk (local frame) of `radius` mm around `centre`."""
        x, y = self.leg.to_global(self.k, centre[0], centre[1])
        i0 = int(np.floor((y - radius - self.y0) / self.dy)) - 1
        i1 = int(np.ceil((y + radius - self.y0) / self.dy)) + 2
        j0 = int(np.floor((x - radius - self.x0) / self.dx)) - 1
        j1 = int(np.ceil((x + radius - self.x0) / self.dx)) + 2
        i0, j0 = max(i0, 0), max(j0, 0)
        i1, j1 = min(i1, self.shape[0]), min(j1, self.shape[1])
        if i0 >= i1 or j0 >= j1:
            return None
        return slice(i0, i1), slice(j0, j1)


def _render_slice(
    k: int,
    legs: list[_Leg],
    background: np.ndarray | None,
    shape: tuple[int, int],
    hu_table: np.ndarray,
    sr: float,
    sc: float,
    air_pockets: list[tuple],
):
    """HU (before noise), codes at the voxel centres and leg owner (0 none, i+1 = legs[i]) of slice k."""
    f = SUPERSAMPLE
    rows_s, cols_s = shape[0] * f, shape[1] * f
    codes = background.copy() if background is not None else np.zeros((rows_s, cols_s), dtype=np.uint8)
    hu_sub = hu_table[codes]
    owner = np.zeros((rows_s, cols_s), dtype=np.uint8)
    power_min = np.full((rows_s, cols_s), np.inf, dtype=np.float32)
    n_inside = np.zeros((rows_s, cols_s), dtype=np.uint8)  # how many legs claim each subsample
    y_all, x_all = _sub_coords(shape[0], sr), _sub_coords(shape[1], sc)
    rendered = []
    for i, leg in enumerate(legs):
        extent = float(max(leg.ru[k], leg.rv[k])) * 1.12 + 2.0
        r0, r1 = max(0, int((leg.cy[k] - extent) / sr * f)), min(rows_s, int((leg.cy[k] + extent) / sr * f) + 2)
        c0, c1 = max(0, int((leg.cx[k] - extent) / sc * f)), min(cols_s, int((leg.cx[k] + extent) / sc * f) + 2)
        box = (slice(r0, r1), slice(c0, c1))
        grid = _Grid(leg, k, *box, y_all[r0:r1], x_all[c0:c1], sr, sc)
        leg_codes, leg_hu, power = _leg_codes(grid, hu_table)
        rendered.append((box, leg_codes, leg_hu))
        # ownership by power distance (rho^2 - R(theta)^2): splits overlapping legs along their contact line
        pm = power_min[box]
        better = power < pm
        pm[better] = power[better]
        owner[box][better & (power < 0)] = i + 1
        n_inside[box] += power < 0
    for i, (box, leg_codes, leg_hu) in enumerate(rendered):
        mine = owner[box] == i + 1
        # where touching legs overlap, each one's skin merges into one continuous SAT
        merged = mine & (n_inside[box] > 1) & (leg_codes == SKIN)
        leg_codes[merged] = SAT_FAT
        leg_hu[merged] = legs[i].sat_hu
        codes[box][mine] = leg_codes[mine]
        hu_sub[box][mine] = leg_hu[mine]
        if legs[i].clothing is not None:  # on the skin, where no leg and no couch is
            cloth = (leg_codes == CLOTH) & (owner[box] == 0) & (codes[box] == AIR)
            codes[box][cloth] = CLOTH
            hu_sub[box][cloth] = leg_hu[cloth]
    if air_pockets:
        _paint_air_pockets(k, air_pockets, codes, hu_sub, owner, y_all, x_all)
    hu = hu_sub.reshape(shape[0], f, shape[1], f).mean(axis=(1, 3))
    c = (f - 1) // 2
    return hu, codes[c::f, c::f], owner[c::f, c::f]


def _leg_codes(g: _Grid, hu_table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, HU and power distance of one leg on its grid window."""
    leg, k = g.leg, g.k
    u, v = g.u, g.v
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    r_skin, sat = leg.radial_profiles(k, theta)
    depth = r_skin - rho  # mm below the skin surface
    codes = np.zeros(u.shape, dtype=np.uint8)
    codes[depth > 0] = SKIN
    codes[depth >= leg.skin_mm] = SAT_FAT
    codes[depth >= sat] = FASCIA
    dcomp = depth - (sat + FASCIA_MM)  # depth inside the muscle compartment
    compartment = dcomp >= 0
    codes[compartment] = MUSCLE
    marrow_hu = np.zeros(u.shape, dtype=np.float32)
    cortex_hu = None  # hard phantom: per-subsample HU of an osteoporotic cortex
    inner = (MUSCLE, SEPTUM_FAT, POCKET_FAT, MARBLING)
    if leg.sat_strands:
        in_sat = np.flatnonzero(codes == SAT_FAT)
        layer = np.maximum(sat.flat[in_sat] - leg.skin_mm, 1e-3)
        rel = (depth.flat[in_sat] - leg.skin_mm) / layer  # 0 under the skin .. 1 at the fascia
        th = theta.flat[in_sat]
        for frac, a0, a1, width in leg.sat_strands:
            strand = ((th - a0) % (2 * np.pi) <= (a1 - a0)) & (np.abs(rel - frac) * layer < width / 2)
            codes.flat[in_sat[strand]] = SAT_STRAND

    for shape in leg.per_slice[k]:
        kind = shape[0]
        if kind == "septum":
            _, a, b, width, bend = shape
            length = np.hypot(b[0] - a[0], b[1] - a[1])
            if length <= 0:
                continue
            # two segments through a midpoint pushed sideways by `bend` mm: a gently curved septum
            mid = ((a[0] + b[0]) / 2 - bend * (b[1] - a[1]) / length, (a[1] + b[1]) / 2 + bend * (b[0] - a[0]) / length)
            for p0, p1 in ((a, mid), (mid, b)):
                centre = ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2)
                w = g.window(centre, np.hypot(p1[0] - p0[0], p1[1] - p0[1]) / 2 + width)
                if w is not None:
                    _paint_segment(codes[w], u[w], v[w], p0, p1, width / 2, SEPTUM_FAT, (MUSCLE,))
        elif kind == "wedge":
            _, ang, wdepth, half_width = shape
            r_f = leg.fascia_radius(k, ang)
            w = g.window((r_f * np.cos(ang), r_f * np.sin(ang)), wdepth + half_width + 2.0)
            if w is not None:
                dc = dcomp[w]
                arc = np.abs(_wrap(theta[w] - ang)) * rho[w]
                inside = (dc >= 0) & (dc < wdepth) & (arc < half_width * (1.0 - dc / wdepth))
                inside &= np.isin(codes[w], (MUSCLE, SEPTUM_FAT))
                codes[w][inside] = POCKET_FAT
        elif kind == "pocket":
            _, centre, a, b, orient = shape
            _paint_ellipse(g, codes, centre, a, b, orient, POCKET_FAT, (MUSCLE, SEPTUM_FAT))

    for k_first, k_last, ang, frac, a, b, orient in leg.blobs:
        if k_first <= k <= k_last:
            s = np.sqrt(max(0.0, 1.0 - (2 * (k - (k_first + k_last) / 2) / max(k_last - k_first, 1e-6)) ** 2))
            rho_b = leg.fascia_radius(k, ang) * frac
            _paint_ellipse(
                g, codes, (rho_b * np.cos(ang), rho_b * np.sin(ang)), a * s, b * s, orient, MARBLING, (MUSCLE,)
            )
    fatty_muscle = _paint_infiltration(g, codes) if leg.infiltration else None
    if leg.clothing is not None:  # outside the skin; `_render_slice` keeps it only where nothing else is
        a0, a1, thickness = leg.clothing
        codes[(depth <= 0) & (depth > -thickness) & ((theta - a0) % (2 * np.pi) <= a1 - a0)] = CLOTH

    for shape in leg.per_slice[k]:
        kind = shape[0]
        if kind == "artery":  # hard phantom: an artery lying on the cortex (the bone is painted over it below)
            _, centre, r_art = shape
            _paint_ellipse(g, codes, centre, r_art, r_art, 0.0, ARTERY, inner)
        elif kind == "vessels":
            _, (cu, cv), r_art, r_vein, calc = shape
            _paint_ellipse(g, codes, (cu - r_vein - r_art * 0.6, cv), r_vein, r_vein * 0.8, 0.0, VEIN, inner)
            _paint_ellipse(
                g, codes, (cu + r_vein + r_art * 0.6, cv + 0.5), r_vein * 0.9, r_vein * 0.75, 0.3, VEIN, inner
            )
            _paint_ellipse(g, codes, (cu, cv), r_art, r_art, 0.0, ARTERY, inner)
            if calc is not None:
                _paint_ellipse(
                    g,
                    codes,
                    (cu + r_art * np.cos(calc), cv + r_art * np.sin(calc)),
                    1.4,
                    0.8,
                    calc,
                    CALCIFICATION,
                    inner + (ARTERY,),
                )
        elif kind == "supvein":
            _, ang, frac, r = shape
            rho_s = leg.skin_radius(k, ang) - leg.sat_thickness(k, ang) * frac
            _paint_ellipse(g, codes, (rho_s * np.cos(ang), rho_s * np.sin(ang)), r, r * 0.8, ang, SUP_VEIN, (SAT_FAT,))

    for shape in leg.per_slice[k]:
        if shape[0] == "bone":
            _, centre, r, cortex, lobes, lobe_amp, lobe_phase, trab, *hard = shape
            defect = hard[0] if hard else None
            w = g.window(centre, r * (1 + lobe_amp) + 1.0)
            if w is None:
                continue
            bu, bv = u[w] - centre[0], v[w] - centre[1]
            rr = np.hypot(bu, bv)
            angle = np.arctan2(bv, bu)
            rb = r * (1 + lobe_amp * np.cos(lobes * (angle - lobe_phase))) if lobes > 1 else r
            inside = compartment[w] & (rr < rb)
            codes[w][inside] = CORTEX
            marrow = inside & (rr < rb - cortex)
            if defect is None:
                codes[w][marrow] = MARROW
                marrow_hu[w][marrow] = -60.0 + 310.0 * trab
                continue
            for gap_angle, half_width in defect.gaps:  # the cortex is missing: marrow reaches the muscle
                marrow |= inside & (np.abs(_wrap(angle - gap_angle)) * rr < half_width)
            codes[w][marrow] = MARROW
            texture = _wave_field(bu, bv, defect.z_mm, defect.waves)
            marrow_hu[w][marrow] = defect.marrow_hu + defect.marrow_texture * texture[marrow]
            shell = inside & ~marrow
            if cortex_hu is None:
                cortex_hu = np.full(u.shape, np.nan, dtype=np.float32)
            cortex_hu[w][shell] = defect.cortex_hu + defect.cortex_texture * texture[shell]

    hu = hu_table[codes]
    muscle = codes == MUSCLE
    amp, phase = leg.muscle_harm
    hu[muscle] = leg.muscle_hu + amp * np.cos(theta[muscle] - phase)
    hu[codes == SAT_FAT] = leg.sat_hu
    marrow = codes == MARROW
    hu[marrow] = marrow_hu[marrow]
    if fatty_muscle is not None:  # lower-attenuating muscle between the fat streaks
        hu[fatty_muscle & muscle] -= FATTY_MUSCLE_SHIFT_HU
    if cortex_hu is not None:
        custom = (codes == CORTEX) & np.isfinite(cortex_hu)
        hu[custom] = cortex_hu[custom]
    power = (rho**2 - r_skin**2).astype(np.float32)
    return codes, hu, power


def _paint_ellipse(g: _Grid, codes: np.ndarray, centre, a: float, b: float, orient: float, code: int, only) -> None:
    if a <= 0.05 or b <= 0.05:
        return
    w = g.window(centre, max(a, b))
    if w is None:
        return
    du, dv = g.u[w] - centre[0], g.v[w] - centre[1]
    co, si = np.cos(orient), np.sin(orient)
    p, q = du * co + dv * si, -du * si + dv * co
    inside = ((p / a) ** 2 + (q / b) ** 2 <= 1.0) & np.isin(codes[w], only)
    codes[w][inside] = code


def _paint_segment(codes, u, v, a, b, half_width, code, only) -> None:
    ex, ey = b[0] - a[0], b[1] - a[1]
    length2 = ex * ex + ey * ey
    if length2 <= 0:
        return
    du, dv = u - a[0], v - a[1]
    s = np.clip((du * ex + dv * ey) / length2, 0.0, 1.0)
    inside = ((du - s * ex) ** 2 + (dv - s * ey) ** 2 <= half_width**2) & np.isin(codes, only)
    codes[inside] = code


def _paint_air_pockets(k, pockets, codes, hu_sub, owner, y_all, x_all) -> None:
    """Air trapped in the crease where the touching legs meet, at the ends of their contact line."""
    active = [p for p in pockets if p[0] <= k <= p[1]]
    if not active:
        return
    contact = (owner[:, 1:] > 0) & (owner[:, :-1] > 0) & (owner[:, 1:] != owner[:, :-1])
    rr, cc = np.nonzero(contact)
    if rr.size == 0:
        return
    dy = float(y_all[1] - y_all[0])
    for k_first, k_last, end, radius in active:
        s = np.sqrt(max(0.0, 1.0 - (2 * (k - (k_first + k_last) / 2) / max(k_last - k_first, 1e-6)) ** 2))
        r = radius * s
        if r < 0.3:
            continue
        i = int(np.argmin(rr) if end < 0 else np.argmax(rr))
        cy = float(y_all[rr[i]]) - end * r * 1.3  # just inside the body, at the end of the contact line
        cx = float(x_all[cc[i]]) + dy / 2
        win_r = slice(max(0, rr[i] - int(3 * r / dy) - 3), rr[i] + int(3 * r / dy) + 4)
        win_c = slice(max(0, cc[i] - int(2 * r / dy) - 3), cc[i] + int(2 * r / dy) + 4)
        yy, xx = y_all[win_r][:, None], x_all[win_c][None, :]
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (owner[win_r, win_c] > 0)
        codes[win_r, win_c][inside] = AIR_POCKET
        hu_sub[win_r, win_c][inside] = -1000.0
        owner[win_r, win_c][inside] = 0


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, int], sd: float) -> np.ndarray:
    """Gaussian noise correlated over about a voxel (like reconstructed CT noise), scaled to `sd` HU."""
    if sd <= 0:
        return np.zeros(shape, dtype=np.float32)
    smooth = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.6)
    return smooth * np.float32(sd / max(float(smooth.std()), 1e-6))


# ---------------------------------------------------------------------------------------------------- perturbation
def perturb_slices(
    phantom: Phantom, slices, seed: int = 0, shift_hu: float = 90.0, noise_hu: float = 60.0, radius_mm: float = 60.0
) -> Phantom:
    """A copy of `phantom` whose HU are disturbed on `slices` (labels unchanged): inside a disc of `radius_mm`
    around a point of the legs, the HU are raised by a smooth bump of up to `shift_hu` and get extra noise of
    `noise_hu` SD (a beam-hardening or metal streak region, or an unfamiliar scanner). Fat there looks like fluid
    or muscle, so a model trained on clean slices is wrong on them more often than elsewhere: the ground truth for
    "where should an annotator look first" (tests of the uncertain review mode)."""
    rng = np.random.default_rng(seed)
    hu = phantom.hu.astype(np.float32)
    _, rows, cols = hu.shape
    sz, sr, sc = phantom.spacing
    y = (np.arange(rows) * sr)[:, None]
    x = (np.arange(cols) * sc)[None, :]
    body = np.argwhere(phantom.labels > 0)
    for k in sorted({int(s) for s in slices}):
        inside = body[body[:, 0] == k]
        if not len(inside):
            continue
        _, r, c = inside[rng.integers(len(inside))]
        d2 = (y - r * sr) ** 2 + (x - c * sc) ** 2
        bump = shift_hu * np.exp(-d2 / (2 * (radius_mm / 2) ** 2)) * (d2 <= radius_mm**2)
        noise = rng.normal(0.0, noise_hu, size=(rows, cols)) * (d2 <= radius_mm**2)
        hu[k] = np.where(phantom.labels[k] > 0, hu[k] + bump + noise, hu[k])
    return Phantom(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        labels=phantom.labels,
        leg_ids=phantom.leg_ids,
        spacing=phantom.spacing,
        region=phantom.region,
        sides=phantom.sides,
        params={**phantom.params, "perturbed_slices": sorted({int(s) for s in slices})},
    )
