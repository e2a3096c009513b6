"""Configuration of the synthetic layered-video generator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SynthConfig:
    """Every knob of :func:`pipeline.synth.render_video`.

    Units: lengths in pixels of the *working* resolution (``height`` x
    ``width``) unless stated as a fraction; angles in degrees; probabilities
    are per video unless stated otherwise.
    """

    # --- clip geometry -----------------------------------------------------
    num_frames: int = 30
    """Frames per video (T)."""
    height: int = 128
    """Frame height H (working resolution)."""
    width: int = 224
    """Frame width W (working resolution)."""

    # --- objects -------------------------------------------------------------
    object_count_probs: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
    """P(1 object), P(2 objects), P(3 objects), ... (normalised)."""
    object_size: tuple[float, float] = (0.3, 0.65)
    """Sprite diameter at frame 0 as a fraction of ``min(H, W)`` (uniform)."""
    p_silhouette: float = 0.5
    """Per video: probability that all sprites are real silhouettes (needs a
    bank with annotations; otherwise polygons are used)."""
    polygon_vertices: tuple[int, int] = (3, 8)
    """Inclusive range of polygon vertex counts."""
    polygon_min_spacing: float = 0.35
    """Minimum distance between any two polygon vertices, as a fraction of the
    polygon radius (avoids degenerate slivers)."""
    polygon_min_area: float = 0.25
    """Minimum polygon area as a fraction of the area of its circumscribed
    circle of radius R."""
    p_convex: float = 0.3
    """Probability that a polygon is the convex hull of its points (else a
    star-shaped, usually non-convex polygon)."""
    silhouette_min_area: float = 0.01
    """Reject annotation masks covering less than this fraction of their frame."""

    # --- textures --------------------------------------------------------------
    p_natural_texture: float = 1.0
    """Probability that a texture is a crop of a natural image when the bank has
    images (procedural textures otherwise)."""
    texture_blur: float = 0.5
    """Sigma (px) of a Gaussian prefilter applied to every sprite/background
    texture (limits aliasing when layers shrink); 0 disables it."""
    color_jitter: float = 0.15
    """Strength of per-layer brightness/contrast/saturation jitter."""

    # --- object motion (homography trajectory) ------------------------------------
    min_speed: float = 0.5
    """Minimum mean speed of an object centre, px/frame."""
    max_speed: float = 5.0
    """Maximum mean speed of an object centre, px/frame."""
    max_point_speed: float = 10.0
    """Cap on the per-frame displacement of any sprite point (all motion terms
    and TPS included); the motion amplitudes are scaled down to respect it."""
    path_wiggle: float = 0.2
    """Amplitude of the sideways sinusoidal deviation of the path, as a fraction
    of the path length."""
    rotation_range: float = 40.0
    """Total in-plane rotation over the clip is uniform in +-this (degrees)."""
    scale_range: tuple[float, float] = (0.75, 1.33)
    """Ratio final/initial sprite scale is log-uniform in this range."""
    perspective_range: float = 0.12
    """Perspective coefficients (normalised by the sprite radius) at the start
    and end of the clip are uniform in +-this."""
    shear_range: float = 0.1
    """Anisotropic stretch: log aspect ratio uniform in +-this, changing linearly."""

    # --- thin-plate-spline deformation -------------------------------------------
    p_tps: float = 2 / 3
    """Per video: probability that objects also get a TPS deformation."""
    tps_magnitude: float = 0.9
    """Largest handle displacement as a fraction of D_i / 2, where D_i is the
    distance from handle i to the nearest other handle (must be < 1)."""
    tps_grid: int = 3
    """Silhouettes use a tps_grid x tps_grid grid of handles over their box."""
    tps_move_prob: float = 0.5
    """Per handle: probability that it moves (at least one always moves)."""
    tps_cycles: tuple[float, float] = (0.3, 1.5)
    """Oscillation frequency of a handle, cycles per clip (uniform)."""
    tps_min_jacobian: float = 0.3
    """TPS amplitudes are halved until det(J) >= this over the sprite (no folds)."""

    # --- background ------------------------------------------------------------
    p_bg_clip: float = 0.5
    """Probability of a real video clip background (needs a bank with frames);
    otherwise a homography-moved image."""
    bg_canvas_scale: float = 1.5
    """Side of the background image relative to the frame (room for the camera)."""
    p_static_camera: float = 0.1
    """Probability that a homography background does not move."""
    bg_max_speed: float = 3.0
    """Maximum mean camera pan speed, px/frame."""
    bg_rotation_range: float = 6.0
    """Total camera roll over the clip, uniform in +-this (degrees)."""
    bg_scale_range: tuple[float, float] = (0.9, 1.15)
    """Camera zoom ratio final/initial, log-uniform."""
    bg_perspective_range: float = 0.04
    """Camera perspective coefficients (normalised by the frame half-diagonal)."""
    clip_steps: tuple[int, ...] = (1, 2)
    """Frame strides used when sampling real clips (uniform choice, falls back
    to 1 when the sequence is too short)."""
    clip_crop_range: tuple[float, float] = (0.3, 0.9)
    """Crop height of a real clip as a fraction of its frame height."""
    clip_max_fg_overlap: float = 0.05
    """A clip crop is accepted if the annotated foreground covers at most this
    fraction of it (union over used frames); else the best of the candidates
    is used and the overlap is recorded in meta."""
    clip_flow: str = "dis"
    """Background flow of real clips, which is unknown: ``"dis"`` estimates it
    with OpenCV DIS (flagged not exact), ``"zero"`` writes zeros (flagged)."""

    # --- stationary objects -------------------------------------------------------
    p_stationary: float = 1 / 3
    """Fraction of *all* videos in which one object is still relative to the
    background. Only possible with homography backgrounds, so the probability
    is raised to p / (1 - P(clip background)) on those (capped at 1)."""
    stationary_len: tuple[int, int] = (1, 5)
    """Inclusive range of the number of consecutive still frames (clamped to T - 1)."""

    # --- occluder ------------------------------------------------------------------
    p_occluder: float = 0.25
    """Probability of an artificial occluder (top layer, moves with the camera)."""
    occluder_size: tuple[float, float] = (0.2, 0.5)
    """Occluder diameter as a fraction of ``min(H, W)``."""
    p_occluder_bar: float = 0.5
    """Probability that the occluder is a bar (pole-like) rather than a polygon."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded in meta (ignored by the generator)."""

    def validate(self) -> "SynthConfig":
        if self.num_frames < 2:
            raise ValueError("num_frames must be >= 2")
        if self.height < 16 or self.width < 16:
            raise ValueError("frame size must be at least 16x16")
        if not self.object_count_probs or min(self.object_count_probs) < 0 or sum(self.object_count_probs) <= 0:
            raise ValueError("object_count_probs must be non-negative with a positive sum")
        lo, hi = self.polygon_vertices
        if not 3 <= lo <= hi:
            raise ValueError("polygon_vertices must satisfy 3 <= lo <= hi")
        if not 0 <= self.tps_magnitude < 1:
            raise ValueError("tps_magnitude must be in [0, 1)")
        if self.clip_flow not in ("dis", "zero"):
            raise ValueError("clip_flow must be 'dis' or 'zero'")
        a, b = self.stationary_len
        if not 1 <= a <= b:
            raise ValueError("stationary_len must satisfy 1 <= lo <= hi (clamped to num_frames - 1)")
        if self.bg_canvas_scale < 1.05:
            raise ValueError("bg_canvas_scale must be >= 1.05")
        return self

    def to_dict(self) -> dict:
        return asdict(self)
