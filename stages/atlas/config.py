"""Configuration of the atlas stage: encodings, loss weights and schedule (paper defaults), limits.

Loss weights and the early-phase schedule are Neural Layered Atlases' (Kasten et al. 2021):
rgb 5000, gradient 1000, optical flow 5 per layer, alpha flow 49, rigidity 1 (1 px step),
global rigidity 5 (fg) / 50 (bg) with a 100 px step until iteration 5000, sparsity 1000,
alpha bootstrapping 2000 until iteration 10000, 10k pixels per batch, mappings initialised to
0.8 x identity. The paper fits 400k iterations of positional-encoding MLPs; the hash-grid
default converges in far fewer (``iterations=None`` picks 20k for ``hash``, 400k for ``pe``).
Hash-grid sizes follow Hashing-NVD (16 levels x 2 features, 2^15 entries, base 16, x1.25).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, Resources
from stages.atlas.windows import default_overlap


@dataclass(frozen=True)
class HashGridConfig:
    levels: int = 16
    features: int = 2
    log2_table_size: int = 15
    base_resolution: int = 16
    per_level_scale: float = 1.25
    mapping_levels: int = 12  # coarsest levels the mappings see (smooth mappings; alpha/atlas use all)
    hidden: int = 64  # width of the small MLP heads after the encoding
    layers: int = 2  # hidden layers of those heads
    lr: float = 1e-2  # Adam learning rate of the atlas and alpha fields
    mapping_lr: float = 2e-3  # of the mapping fields (slower: they set the geometry)

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 32 or not 1 <= self.features <= 8:
            raise ConfigError(f"hash.levels must be 1..32 and hash.features 1..8, got {self.levels}/{self.features}")
        if not 8 <= self.log2_table_size <= 24:
            raise ConfigError(f"hash.log2_table_size must be 8..24, got {self.log2_table_size}")
        if self.base_resolution < 2 or self.per_level_scale < 1.0:
            raise ConfigError("hash.base_resolution must be >= 2 and hash.per_level_scale >= 1")


@dataclass(frozen=True)
class PEConfig:
    """The paper's MLPs: widths, depths and positional-encoding frequencies."""

    width: int = 256
    fg_mapping_layers: int = 6
    bg_mapping_layers: int = 4
    alpha_layers: int = 8
    atlas_layers: int = 8
    mapping_frequencies: int = 0
    alpha_frequencies: int = 5
    atlas_frequencies: int = 10
    lr: float = 1e-4


@dataclass(frozen=True)
class LossWeights:
    rgb: float = 5000.0
    gradient: float = 1000.0
    flow: float = 5.0  # per layer
    alpha_flow: float = 49.0
    rigidity: float = 1.0
    global_rigidity_fg: float = 5.0
    global_rigidity_bg: float = 50.0
    sparsity: float = 1000.0
    bootstrap: float = 2000.0


@dataclass(frozen=True)
class Schedule:
    global_rigidity_until: int = 5000  # iterations with the global rigidity term
    bootstrap_until: int = 10000  # iterations with alpha bootstrapping from masks
    rigidity_step_px: float = 1.0
    global_rigidity_step_px: float = 100.0  # capped at a quarter of the frame's larger side


@dataclass(frozen=True)
class TrackerSettings:
    """Coarse step of the coarse-to-fine flow: pyramidal LK grid tracks (stages/atlas/tracks.py)."""

    enabled: bool = True  # off: the dense flow's own pyramid only (loses objects moving > ~10 px a frame)
    levels: int = 5  # LK pyramid levels above the frame (each halves the size)
    window: int = 21  # LK window side, pixels
    max_points: int = 2500  # grid points tracked per frame pair
    fb_px: float = 1.0  # forward-backward check of a track, pixels
    ransac_px: float = 1.5  # inlier distance of the homography / affine fits, pixels
    min_cluster: int = 8  # tracks a separately moving region needs
    max_clusters: int = 3  # separately moving regions besides the background homography
    region_margin: float = 0.03  # a cluster's hull is grown by this fraction of the larger side
    search: float = 0.2  # a masked object is searched this fraction of the larger side around its box

    def __post_init__(self) -> None:
        if not 0 <= self.levels <= 8 or self.window < 5 or self.max_points < 16:
            raise ConfigError("tracker.levels must be 0..8, tracker.window >= 5, tracker.max_points >= 16")


@dataclass(frozen=True)
class SegmentationConfig:
    """Motion segmentation without a mask_uri (stages/atlas/segmentation.py); pixels, fractions of the frame."""

    background_planes: int = 2  # homographies the background may need (parallax: a near and a far plane)
    plane_ransac_px: float = 0.5  # inlier distance of a plane's RANSAC fit (tight: one plane per depth)
    plane_min_fraction: float = 0.15  # a further plane must explain this fraction of the frame's samples
    border_band: float = 0.08  # border bands (first plane's samples; spanning test) are this fraction of a side
    border_cover: float = 0.25  # a further plane reaches a border when it explains this share of the band
    photometric_margin: float = 2.0  # grey levels the background planes may lose by and still claim a pixel
    photometric_min: float = 8.0  # grey levels of colour the planes mispredict that alone mark foreground
    texture_min: float = 2.0  # grey levels per pixel of local gradient below which the flow is not evidence
    misregistration_px: float = 1.5  # colour errors a shift this large explains (gradient x shift) are not evidence
    # object layer: one RANSAC affine on the samples the planes leave; when it explains object_min_fraction of the
    # samples and does not span the frame, its pixels are evidence (an object the camera carries). Off by default:
    # on man-skiing it finds the rider at 384 px but also the snow trail, which the checks accept (docs/atlas.md)
    object_layer: bool = False
    object_ransac_px: float = 1.5  # ... its inlier distance, pixels (the planes must miss a pixel by twice this)
    object_min_fraction: float = 0.1  # ... the share of the textured samples it must explain
    object_close: float = 0.05  # ... its textured pixels are closed over gaps of this fraction of the shorter side
    noise_factor: float = 3.0  # threshold at least this x the background's median residual (flow noise)
    vote_radius: int = 2  # temporal consistency: frames on each side a region must recur in
    vote_fraction: float = 0.5  # ... in this fraction of them
    reach: float = 0.15  # ... within this fraction of the larger side per frame of distance
    min_component: float = 0.002  # connected regions smaller than this fraction of the frame are dropped
    fill_ratio: float = 0.9  # frames with less than this x the median mask area get the neighbour's mask carried
    consensus_radius: int = 3  # tracked vote: the masks of this many frames on each side, carried by the tracker ...
    consensus_fraction: float = 0.4  # ... mark a pixel when this fraction of them (its own included) do; 0: off
    edge_band: float = 0.25  # colour refinement of the outline (GrabCut) within this x the mask's diameter; 0: off
    edge_iterations: int = 3  # ... GrabCut iterations per frame
    track_overlap: float = 0.6  # a frame pair holds one object when its tracked mask and the next share this much
    # of the smaller of the two
    track_min_area: float = 0.0  # ... judged on the pairs whose masks both hold this x the clip's median mask area
    # (smaller ones are what the gap filling replaces: the object moved with the background then); 0: every pair
    min_tracked: float = 0.8  # ... in at least this fraction of the pairs, else NoObjectError (flicker, spray)
    min_object_fraction: float = 0.003  # less foreground than this (mean over frames): "no object found"
    max_object_fraction: float = 0.6  # more than this: no separable object either
    min_presence: float = 0.5  # the object must be found in at least this fraction of the frames

    def __post_init__(self) -> None:
        if not 1 <= self.background_planes <= 4:
            raise ConfigError(f"segmentation.background_planes must be 1..4, got {self.background_planes}")
        if not 0.0 < self.vote_fraction <= 1.0 or not 0.0 <= self.min_presence <= 1.0:
            raise ConfigError("segmentation.vote_fraction must be in (0, 1] and min_presence in [0, 1]")
        if not 0.0 <= self.min_object_fraction < self.max_object_fraction <= 1.0:
            raise ConfigError("segmentation: need 0 <= min_object_fraction < max_object_fraction <= 1")
        if self.consensus_radius < 0 or not 0.0 <= self.consensus_fraction <= 1.0:
            raise ConfigError("segmentation.consensus_radius must be >= 0 and consensus_fraction in [0, 1]")
        if self.edge_band < 0 or self.edge_iterations < 1:
            raise ConfigError("segmentation.edge_band must be >= 0 and edge_iterations >= 1")
        if not 0.0 <= self.track_overlap <= 1.0 or not 0.0 <= self.min_tracked <= 1.0:
            raise ConfigError("segmentation.track_overlap and min_tracked must be in [0, 1]")


@dataclass(frozen=True)
class AtlasConfig:
    encoding: Literal["hash", "pe"] = "hash"
    iterations: int | None = None  # None: 20000 for hash, 400000 for pe
    batch_pixels: int = 10000
    identity_scale: float = 0.8
    motion_init: bool = True  # scaled identity composed with each layer's per-frame flow motion
    # per-frame-pair RANSAC model chained into that motion (masks.layer_motions): the background's
    # (homography: a camera rotating / moving over a far or planar scene, used on the pairs it explains
    # clearly better than the similarity; affine: always the similarity) and the object's (affine: objects
    # are not planar)
    motion_model: Literal["homography", "affine"] = "homography"
    fg_motion_model: Literal["homography", "affine"] = "affine"
    # rigidity terms on the mapping's Jacobian relative to its motion-compensated init (fit.relative_to)
    rigidity_relative_to_init: bool = False
    hash: HashGridConfig = field(default_factory=HashGridConfig)
    pe: PEConfig = field(default_factory=PEConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    schedule: Schedule = field(default_factory=Schedule)
    atlas_resolution: int = 1024  # side of each atlas PNG, pixels
    max_frames: int = 70  # most frames of one fit (the paper's limit); longer clips: see long_clips
    max_pixels: int = 768 * 432 * 70  # frames x height x width budget of one fit (of each window)
    long_clips: Literal["window", "refuse"] = "window"  # over a limit: overlapping windows, or a row error
    window_frames: int | None = None  # frames per window (None: max_frames)
    window_overlap: int | None = None  # frames neighbouring windows share (None: 8, at most a third of a window)
    flow: Literal["dis", "farneback"] = "dis"
    flow_consistency_px: float = 1.0  # forward-backward check threshold
    tracker: TrackerSettings = field(default_factory=TrackerSettings)  # coarse step of the flow
    mask_source: Literal["auto", "manifest", "motion"] = "auto"  # auto: mask_uri when given, else motion
    motion_threshold_px: float = 1.0  # residual motion that marks a pixel foreground
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA only with resources.num_gpus > 0 (pipeline/devices)
    amp: bool = True  # CUDA with bfloat16: MLP trunks autocast to bfloat16, geometry stays float32
    seed: int = 0
    check_every: int = 50  # iterations between NaN / divergence checks
    divergence_factor: float = 50.0  # loss above factor x its best (after warm-up) is divergence
    eval_chunk: int = 65536  # pixels per evaluation batch when rendering
    apply_to: Literal["needing", "all"] = "needing"  # needing: rows whose method needs the atlas
    previews: bool = True
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, min_actors=1, max_actors=1))

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"atlas.iterations must be >= 1, got {self.iterations}")
        if self.batch_pixels < 16:
            raise ConfigError(f"atlas.batch_pixels must be >= 16, got {self.batch_pixels}")
        if not 0.1 <= self.identity_scale <= 1.0:
            raise ConfigError(f"atlas.identity_scale must be in [0.1, 1], got {self.identity_scale}")
        if not 16 <= self.atlas_resolution <= 8192:
            raise ConfigError(f"atlas.atlas_resolution must be 16..8192, got {self.atlas_resolution}")
        if self.max_frames < 2:
            raise ConfigError(f"atlas.max_frames must be >= 2, got {self.max_frames}")
        if self.window_frames is not None and not 2 <= self.window_frames <= self.max_frames:
            raise ConfigError(f"atlas.window_frames must be 2..max_frames ({self.max_frames}), "
                              f"got {self.window_frames}")
        if self.window_overlap is not None and not 1 <= 2 * self.window_overlap <= self.frames_per_window:
            raise ConfigError(f"atlas.window_overlap must be >= 1 and at most half of a window "
                              f"({self.frames_per_window} frames), got {self.window_overlap}")

    @property
    def frames_per_window(self) -> int:
        """Most frames of one window of a long clip (``window_frames``, else ``max_frames``)."""
        return self.window_frames if self.window_frames is not None else self.max_frames

    @property
    def overlap_frames(self) -> int:
        """Frames neighbouring windows share (``window_overlap``, else 8 capped at a third of a window)."""
        if self.window_overlap is not None:
            return self.window_overlap
        return default_overlap(self.frames_per_window)

    @property
    def total_iterations(self) -> int:
        if self.iterations is not None:
            return self.iterations
        return 20000 if self.encoding == "hash" else 400000
