"""Procedural captioned scenes: a tiny text-to-image dataset with an automatic prompt checker.

Every sample is a flat-coloured background with one or two flat-coloured shapes, and a caption
that says exactly what is drawn, for example::

    "a small red circle above a large blue square on a yellow background"
    "a large green triangle on a white background"

Because the images are drawn from a :class:`Scene` description, the same description can score
a *generated* image (a miniature GenEval): :func:`check_image` finds the background colour, segments
the shapes by colour, tells their kind from a geometric feature and their relation from their
centroids.

Conventions
-----------
* Geometry lives in *image fractions*: ``x`` to the right, ``y`` downwards, both in [0, 1], so a
  scene renders at any resolution. A shape's ``center`` is the centre of its bounding box and its
  size ``s`` is the side of that box (circle diameter, square side, triangle base = height).
* Images are float tensors ``(3, H, W)`` in [-1, 1]: ``value = rgb_255 / 127.5 - 1`` (what the
  tokenizer and the transformer consume).
* Anti-aliasing is analytic: with ``d`` the signed distance to a shape's edge in pixels (negative
  inside), its pixel coverage is ``alpha = clamp(1/2 - d, 0, 1)`` and the pixel is composited as
  ``I <- (1 - alpha) I + alpha c``. About 7k 64x64 images per second on one CPU core
  (the checker: about 400 images per second).
* Splits by caption: a stable hash (sha256) of a scene's *canonical* caption, taken mod 100, puts
  it in the held-out test split when below 10 (:func:`is_heldout`), in the validation split when
  in [10, 15) (:func:`caption_split`; for choosing sampling settings, never trained on), else in
  training. The canonical caption writes a two-shape relation as "above" or "left of" (swapping
  the shapes if needed), so "A below B" and "B above A" fall on the same side and a held-out
  composition is never seen in training under either wording.
* Layouts of two shapes (:data:`LAYOUTS`). ``"relation"`` (the default): the relation fixes the
  layout. Both shapes sit on the image's centre line across the relation's axis (each jittered
  by at most :data:`JITTER`, 2 pixels at 64 px), the pair is centred along the axis (same
  jitter, less where the pair fills the image) and the free gap between the shapes is in
  [GAP, GAP + SPACING]. ``"free"``: the pair is placed anywhere the relation still holds
  unambiguously; one caption then allows many layouts, which a next-scale model draws token by
  token in parallel and mixes up (the course's experiment on the limits of parallel decoding).
  One-shape scenes are placed anywhere in both.
* Randomness comes only from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# --------------------------------------------------------------------------- vocabulary
# Six colours far apart in RGB (min pairwise distance ~175 of 441), so they survive a lossy
# 64x64 reconstruction. The shape colour always differs from the background and the other shape.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
KINDS: tuple[str, ...] = ("circle", "square", "triangle")  # fill of bbox: pi/4, 1, 1/2
SIZES: dict[str, float] = {"small": 0.25, "large": 0.40}  # bounding-box side / image side
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")
RELATION_WORDS = {"above": "above", "below": "below",
                  "left of": "to the left of", "right of": "to the right of"}
INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}

PAD = 0.04                # free margin between any shape and the image border
GAP = 0.06                # min free gap between two shapes along the relation's axis
OFF_AXIS = 0.5            # free layout: |offset across the axis| <= OFF_AXIS * |offset along it|
JITTER = 2 / 64           # relation layout: largest shift off the centre line (2 px at 64 px)
SPACING = 0.04            # relation layout: the gap between the shapes is in [GAP, GAP + SPACING]
LAYOUTS = ("relation", "free")
TWO_SHAPE_PROB = 0.5      # share of scenes with two shapes
HELDOUT_PERCENT = 10      # share of canonical captions held out for prompt-following tests
VALIDATION_PERCENT = 5    # share of canonical captions kept out of training to choose sampling settings
SPLITS = ("train", "validation", "heldout", "train+validation")  # the last: every caption not held out


@dataclass(frozen=True)
class Shape:
    kind: str                       # one of KINDS
    color: str                      # one of COLORS
    size: str                       # one of SIZES
    center: tuple[float, float]     # (x, y) of the bounding-box centre, image fractions

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.kind}"


@dataclass(frozen=True)
class Scene:
    background: str                 # one of COLORS
    shapes: tuple[Shape, ...]       # one or two shapes
    relation: str | None = None     # for two shapes: where shapes[0] is relative to shapes[1]

    def __post_init__(self):
        if self.background not in PALETTE:
            raise ValueError(f"background {self.background!r} not in {COLORS}")
        if len(self.shapes) not in (1, 2):
            raise ValueError(f"a scene holds 1 or 2 shapes, got {len(self.shapes)}")
        for s in self.shapes:
            if s.kind not in KINDS or s.color not in PALETTE or s.size not in SIZES:
                raise ValueError(f"unknown kind/colour/size in {s}")
            if s.color == self.background:
                raise ValueError(f"shape colour {s.color!r} equals the background")
        if len(self.shapes) == 2:
            if self.relation not in RELATIONS:
                raise ValueError(f"relation {self.relation!r} not in {RELATIONS}")
            if self.shapes[0].color == self.shapes[1].color:
                raise ValueError("the two shapes must have different colours")
        elif self.relation is not None:
            raise ValueError("a one-shape scene has no relation")

    @property
    def caption(self) -> str:
        if len(self.shapes) == 1:
            subject = self.shapes[0].phrase
        else:
            subject = f"{self.shapes[0].phrase} {RELATION_WORDS[self.relation]} {self.shapes[1].phrase}"
        return f"{subject} on a {self.background} background"

    @property
    def canonical_caption(self) -> str:
        """The caption with the relation flipped to "above"/"left of" (shapes swapped if needed)."""
        if self.relation in ("below", "right of"):
            flipped = Scene(self.background, self.shapes[::-1], INVERSE[self.relation])
            return flipped.caption
        return self.caption


def _caption_bucket(scene: Scene) -> int:
    digest = hashlib.sha256(scene.canonical_caption.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def is_heldout(scene: Scene) -> bool:
    """Held out iff sha256(canonical caption) mod 100 < HELDOUT_PERCENT (stable across runs)."""
    return _caption_bucket(scene) < HELDOUT_PERCENT


def caption_split(scene: Scene) -> str:
    """"heldout" (bucket < 10), "validation" (bucket in [10, 15)) or "train", by the caption."""
    bucket = _caption_bucket(scene)
    if bucket < HELDOUT_PERCENT:
        return "heldout"
    return "validation" if bucket < HELDOUT_PERCENT + VALIDATION_PERCENT else "train"


# --------------------------------------------------------------------------- sampling
def _choice(options: Sequence, g: torch.Generator):
    return options[int(torch.randint(len(options), (), generator=g))]


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _place_pair_on_axis(s0: float, s1: float, relation: str, g: torch.Generator):
    """The "relation" layout: centres of two boxes of sides s0, s1, box 0 `relation` box 1.

    Across the axis both centres are 1/2 + U(-JITTER, JITTER). Along it the free gap is
    U(GAP, GAP + SPACING), so the centre offset is d = (s0 + s1)/2 + gap, and the pair's extent
    (s0 + s1 + gap) is centred at 1/2 + U(-JITTER, JITTER), the shift clamped to keep both
    boxes PAD inside the image.
    """
    d = (s0 + s1) / 2 + _uniform(GAP, GAP + SPACING, g)
    first_is_0 = relation in ("above", "left of")        # box 0 has the smaller coordinate
    s_first, s_second = (s0, s1) if first_is_0 else (s1, s0)
    half_extent = (s_first / 2 + d + s_second / 2) / 2
    slack = max(0.0, 0.5 - PAD - half_extent)
    middle = 0.5 + _uniform(-min(JITTER, slack), min(JITTER, slack), g)
    a_first = middle - half_extent + s_first / 2
    a0, a1 = (a_first, a_first + d) if first_is_0 else (a_first + d, a_first)
    b0, b1 = (0.5 + _uniform(-JITTER, JITTER, g) for _ in range(2))
    vertical = relation in ("above", "below")             # axis is y for above/below
    return ((b0, a0), (b1, a1)) if vertical else ((a0, b0), (a1, b1))


def _place_pair(s0: float, s1: float, relation: str, g: torch.Generator):
    """The "free" layout: centres of two boxes of sides s0, s1 so that box 0 is `relation`
    box 1, with margins.

    Along the relation's axis the centre offset is d in [(s0+s1)/2 + GAP, 1 - (s0+s1)/2 - 2 PAD]
    (a clear gap and both boxes inside); across it the offset is at most OFF_AXIS * d, so the
    relation is unambiguous and the boxes cannot overlap.
    """
    d = _uniform((s0 + s1) / 2 + GAP, 1 - (s0 + s1) / 2 - 2 * PAD, g)
    first_is_0 = relation in ("above", "left of")        # box 0 has the smaller coordinate
    s_first, s_second = (s0, s1) if first_is_0 else (s1, s0)
    a_first = _uniform(PAD + s_first / 2, 1 - PAD - s_second / 2 - d, g)
    a0, a1 = (a_first, a_first + d) if first_is_0 else (a_first + d, a_first)
    b0 = _uniform(PAD + s0 / 2, 1 - PAD - s0 / 2, g)     # across the axis
    b1 = b0 + _uniform(-OFF_AXIS * d, OFF_AXIS * d, g)
    b1 = min(max(b1, PAD + s1 / 2), 1 - PAD - s1 / 2)    # clamping only shrinks |b1 - b0|
    vertical = relation in ("above", "below")             # axis is y for above/below
    return ((b0, a0), (b1, a1)) if vertical else ((a0, b0), (a1, b1))


def _draw_centers(sizes: Sequence[str], relation: str | None, g: torch.Generator, layout: str):
    """The centres of one shape (anywhere inside the margins) or of a pair (by ``layout``)."""
    if len(sizes) == 1:
        s = SIZES[sizes[0]]
        return [(_uniform(PAD + s / 2, 1 - PAD - s / 2, g), _uniform(PAD + s / 2, 1 - PAD - s / 2, g))]
    place_pair = _place_pair_on_axis if layout == "relation" else _place_pair
    return list(place_pair(SIZES[sizes[0]], SIZES[sizes[1]], relation, g))


def redraw_placement(scene: Scene, generator: torch.Generator, layout: str = "relation") -> Scene:
    """The same caption at a new placement, drawn as the dataset draws it (e.g. to measure how
    much a caption leaves open)."""
    centers = _draw_centers([s.size for s in scene.shapes], scene.relation, generator, check_layout(layout))
    return Scene(scene.background, tuple(Shape(s.kind, s.color, s.size, c) for s, c in zip(scene.shapes, centers)),
                 scene.relation)


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def sample_scene(generator: torch.Generator, split: str | None = None,
                 two_shape_prob: float = TWO_SHAPE_PROB, layout: str = "relation") -> Scene:
    """One random scene; `split` ("train", "validation", "heldout") keeps only scenes of that
    split (rejection). `two_shape_prob`: the share of two-shape scenes (training may show more
    of the harder ones; the held-out test set keeps the default). `layout`: see the module
    docstring ("relation" or "free")."""
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
    if not 0.0 <= two_shape_prob <= 1.0:
        raise ValueError(f"two_shape_prob must be in [0, 1], got {two_shape_prob}")
    check_layout(layout)
    g = generator
    while True:
        background = _choice(COLORS, g)
        n_shapes = 2 if float(torch.rand((), generator=g)) < two_shape_prob else 1
        color0 = _choice([c for c in COLORS if c != background], g)
        kinds = [_choice(KINDS, g) for _ in range(n_shapes)]
        sizes = [_choice(tuple(SIZES), g) for _ in range(n_shapes)]
        if n_shapes == 1:
            (center,) = _draw_centers(sizes, None, g, layout)
            scene = Scene(background, (Shape(kinds[0], color0, sizes[0], center),))
        else:
            color1 = _choice([c for c in COLORS if c not in (background, color0)], g)
            relation = _choice(RELATIONS, g)
            c0, c1 = _draw_centers(sizes, relation, g, layout)
            scene = Scene(background, (Shape(kinds[0], color0, sizes[0], c0),
                                       Shape(kinds[1], color1, sizes[1], c1)), relation)
        if split is None or caption_split(scene) in split.split("+"):
            return scene


# --------------------------------------------------------------------------- rendering
def _rgb(color: str) -> torch.Tensor:
    return torch.tensor(PALETTE[color], dtype=torch.float32) / 127.5 - 1   # [0,255] -> [-1,1]


def _signed_distance(shape: Shape, x_HW: torch.Tensor, y_HW: torch.Tensor) -> torch.Tensor:
    """Signed distance (image fractions, < 0 inside) to the shape's edge; exact on the edges."""
    cx, cy = shape.center
    h = SIZES[shape.size] / 2
    dx_HW, dy_HW = x_HW - cx, y_HW - cy
    if shape.kind == "circle":                        # |p - c| - r
        return torch.sqrt(dx_HW**2 + dy_HW**2) - h
    if shape.kind == "square":                        # max(|dx|, |dy|) - h
        return torch.maximum(dx_HW.abs(), dy_HW.abs()) - h
    # upward triangle: apex (cx, cy-h), base y = cy+h, x in [cx-h, cx+h]; sides have normals
    # (+-2, -1)/sqrt(5), so the distance to a side is (2|dx| - (dy + h)) / sqrt(5)
    d_base_HW = dy_HW - h
    d_side_HW = (2 * dx_HW.abs() - (dy_HW + h)) / 5**0.5
    return torch.maximum(d_base_HW, d_side_HW)


def render(scene: Scene, size: int = 64) -> torch.Tensor:
    """Draw `scene` as a float (3, size, size) image in [-1, 1], analytically anti-aliased."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size          # pixel centres
    y_HW, x_HW = torch.meshgrid(t, t, indexing="ij")
    img_3HW = _rgb(scene.background)[:, None, None].expand(3, size, size)
    for shape in scene.shapes:
        alpha_HW = (0.5 - _signed_distance(shape, x_HW, y_HW) * size).clamp(0, 1)  # coverage
        img_3HW = img_3HW + alpha_HW * (_rgb(shape.color)[:, None, None] - img_3HW)  # I+a(c-I)
    return img_3HW.contiguous()


# --------------------------------------------------------------------------- dataset
class SceneSample(NamedTuple):
    image_3HW: torch.Tensor
    caption: str
    scene: Scene


class SceneBatch(NamedTuple):
    image_B3HW: torch.Tensor
    captions: list[str]
    scenes: list[Scene]


def collate_scenes(samples: Sequence[SceneSample]) -> SceneBatch:
    """DataLoader collate_fn: stack the images, keep captions and scenes as lists."""
    return SceneBatch(torch.stack([s.image_3HW for s in samples]),
                      [s.caption for s in samples], [s.scene for s in samples])


class SceneDataset(Dataset):
    """`length` scenes of one split; item i is drawn from a generator seeded by (seed, i)."""

    def __init__(self, split: str = "train", size: int = 64, length: int = 10_000, seed: int = 0,
                 two_shape_prob: float = TWO_SHAPE_PROB, layout: str = "relation"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split, self.size, self.length, self.seed = split, size, length, seed
        self.two_shape_prob, self.layout = two_shape_prob, check_layout(layout)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return sample_scene(g, self.split, self.two_shape_prob, self.layout)

    def __getitem__(self, index: int) -> SceneSample:
        scene = self.scene(index)
        return SceneSample(render(scene, self.size), scene.caption, scene)


def heldout_scenes(n: int, seed: int = 0, layout: str = "relation", split: str = "heldout") -> list[Scene]:
    """n scenes of ``split`` (default the held-out one), deterministic in `seed` (the same as
    SceneDataset(split, ...))."""
    dataset = SceneDataset(split, length=n, seed=seed, layout=layout)
    return [dataset.scene(i) for i in range(n)]


# --------------------------------------------------------------------------- checker
MIN_BLOB = 0.01          # a colour counts as a shape if its largest blob covers >= 1% of the image
TRIANGLE_TOP_SHARE = 0.4  # share of a blob's pixels in the top half of its bbox: triangle 1/4, else 1/2
SQUARE_FILL = 0.89       # fill of the bbox: circle pi/4 = 0.785, square 1
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2


@dataclass(frozen=True)
class SceneScore:
    background: bool
    shape_color: bool        # the set of shape colours found equals the caption's
    shape_kind: bool         # every named shape found with the right kind
    size: bool               # every named shape found with the right size
    position: bool | None    # the relation of the two centroids; None for one shape

    @property
    def correct(self) -> bool:
        """GenEval-style: every applicable attribute right."""
        return all(v for v in (getattr(self, f.name) for f in fields(self)) if v is not None)


class Blob(NamedTuple):
    area: int
    fill: float              # area / bounding-box area
    top_share: float         # share of the pixels in the upper half of the bounding box
    extent: float            # max(bbox width, height) / image side
    centroid: tuple[float, float]   # (x, y), image fractions


def _label_pixels(img_3HW: torch.Tensor) -> torch.Tensor:
    """Nearest palette colour of each pixel -> (H, W) int.

    argmin_k ||I(p) - P_k||^2 = argmin_k (||P_k||^2 - 2 P_k . I(p)), one small matmul.
    """
    palette_K3 = torch.stack([_rgb(c) for c in COLORS])
    _, H, W = img_3HW.shape
    score_KN = (palette_K3**2).sum(1, keepdim=True) - 2 * palette_K3 @ img_3HW.clamp(-1, 1).reshape(3, H * W)
    return score_KN.argmin(0).view(H, W)


def _dilate(m_11HW: torch.Tensor, k: int = 3) -> torch.Tensor:
    return F.max_pool2d(m_11HW, k, 1, k // 2)


def _largest_component(mask_HW: torch.Tensor) -> torch.Tensor | None:
    """The pixels (H, W) bool of the largest 8-connected component of a colour mask, or None
    when it covers less than MIN_BLOB of the image.

    The mask is first *opened* (3x3 erode, then dilate) so specks and the anti-aliasing fringe
    of other shapes cannot connect or count; components are found by letting every pixel take
    the largest id among its neighbours until nothing changes; the component is then taken on
    the raw mask near it (a 5x5 dilation gives back the thin tips the opening cut off).
    """
    H, W = mask_HW.shape
    raw_11HW = mask_HW.float()[None, None]
    open_11HW = _dilate(-_dilate(-raw_11HW))
    if open_11HW.sum() < MIN_BLOB * H * W:
        return None
    ids_11HW = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, 1, H, W) * open_11HW
    while True:
        new_11HW = _dilate(ids_11HW) * open_11HW
        if torch.equal(new_11HW, ids_11HW):
            break
        ids_11HW = new_11HW
    ids_HW = ids_11HW[0, 0].long()
    counts = torch.bincount(ids_HW.flatten())
    counts[0] = 0
    if counts.max() < MIN_BLOB * H * W:
        return None
    component_11HW = (ids_HW == counts.argmax()).float()[None, None]
    return (_dilate(component_11HW, 5) * raw_11HW)[0, 0] > 0


def _largest_blob(mask_HW: torch.Tensor) -> Blob | None:
    """The largest 8-connected component of a colour mask (:func:`_largest_component`), measured."""
    blob_HW = _largest_component(mask_HW)
    if blob_HW is None:
        return None
    H, W = mask_HW.shape
    ys, xs = torch.nonzero(blob_HW, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    h, w = y1 - y0 + 1, x1 - x0 + 1
    mid = (y0 + y1) / 2
    top_share = float(((ys < mid).float() + 0.5 * (ys == mid).float()).mean())
    return Blob(len(ys), len(ys) / (h * w), top_share, max(h, w) / max(H, W),
                (float(xs.float().mean() + 0.5) / W, float(ys.float().mean() + 0.5) / H))


def _kind(blob: Blob) -> str:
    """Triangles (apex up) are bottom-heavy; of the symmetric ones, squares fill their bbox."""
    if blob.top_share < TRIANGLE_TOP_SHARE:
        return "triangle"
    return "square" if blob.fill >= SQUARE_FILL else "circle"


def _relation(blob0: Blob, blob1: Blob) -> str:
    """Where blob 0 is relative to blob 1: the axis with the larger centroid offset decides."""
    dx, dy = blob0.centroid[0] - blob1.centroid[0], blob0.centroid[1] - blob1.centroid[1]
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def check_image(img_3HW: torch.Tensor, scene: Scene) -> SceneScore:
    """Score an image (3, H, W) in [-1, 1] against the scene it should show."""
    if img_3HW.ndim != 3 or img_3HW.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got shape {tuple(img_3HW.shape)}")
    labels_HW = _label_pixels(img_3HW.detach().float().cpu())
    border = torch.cat([labels_HW[0], labels_HW[-1], labels_HW[1:-1, 0], labels_HW[1:-1, -1]])
    background = COLORS[int(torch.bincount(border, minlength=len(COLORS)).argmax())]

    blobs = {c: _largest_blob(labels_HW == k) for k, c in enumerate(COLORS) if c != background}
    found = {c: b for c, b in blobs.items() if b is not None}
    want = [found.get(s.color) for s in scene.shapes]

    position = None
    if scene.relation is not None:
        position = None not in want and _relation(want[0], want[1]) == scene.relation
    return SceneScore(
        background=background == scene.background,
        shape_color=set(found) == {s.color for s in scene.shapes},
        shape_kind=all(b is not None and _kind(b) == s.kind for s, b in zip(scene.shapes, want)),
        size=all(b is not None and (b.extent > SIZE_SPLIT) == (s.size == "large")
                 for s, b in zip(scene.shapes, want)),
        position=position,
    )


BACKGROUND_TOLERANCE = 40.0  # a clean background pixel is within this RGB distance (0..255 units) of its colour


def clean_background_share(img_3HW: torch.Tensor, scene: Scene, tolerance: float = BACKGROUND_TOLERANCE) -> float:
    """The share of background pixels within ``tolerance`` (Euclidean RGB distance, 0-255 units)
    of the caption's background colour: frames, stray blobs and smudges lower it.

    Background pixels: all but the caption's shapes, each taken as the largest blob of its
    colour (as :func:`check_image` finds it) grown by 2 pixels to leave out the anti-aliased
    edge. A ground-truth render scores 1.0."""
    if img_3HW.ndim != 3 or img_3HW.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got shape {tuple(img_3HW.shape)}")
    img_3HW = img_3HW.detach().float().cpu().clamp(-1, 1)
    labels_HW = _label_pixels(img_3HW)
    shapes_HW = torch.zeros(labels_HW.shape, dtype=torch.bool)
    for shape in scene.shapes:
        blob_HW = _largest_component(labels_HW == COLORS.index(shape.color))
        if blob_HW is not None:
            shapes_HW |= blob_HW
    grown_HW = _dilate(shapes_HW.float()[None, None], 5)[0, 0] > 0
    distance_HW = ((img_3HW - _rgb(scene.background)[:, None, None]) * 127.5).norm(dim=0)
    background_HW = ~grown_HW
    if not background_HW.any():
        return 0.0
    return float((distance_HW[background_HW] <= tolerance).float().mean())


def score_images(imgs: torch.Tensor | Sequence[torch.Tensor], scenes: Sequence[Scene]) -> dict[str, float]:
    """Per-attribute accuracy over a batch, plus "overall" (share of images fully correct).
    "position" averages over two-shape scenes only (nan if there are none)."""
    if len(imgs) != len(scenes):
        raise ValueError(f"{len(imgs)} images but {len(scenes)} scenes")
    scores = [check_image(img, scene) for img, scene in zip(imgs, scenes)]
    result = {}
    for f in fields(SceneScore):
        values = [getattr(s, f.name) for s in scores if getattr(s, f.name) is not None]
        result[f.name] = sum(values) / len(values) if values else float("nan")
    result["overall"] = sum(s.correct for s in scores) / max(len(scores), 1)
    return result
