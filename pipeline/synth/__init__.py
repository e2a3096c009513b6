"""Layered synthetic videos for training flow-based multi-object segmentation.

Follows the OCLR recipe (Xie et al. 2022, sect. 3 and supp. B): textured sprites
(random polygons or real silhouettes) moved by smooth homography trajectories,
optionally deformed by thin-plate splines, composited back to front over a
homography-moved image or a real video clip, with an optional occluder that
moves with the camera, and one object occasionally still relative to the
background.

``render_video(cfg, index, seed, bank)`` returns, for T frames of H x W and O
objects::

    rgb         uint8   [T, H, W, 3]
    flow_fwd    float32 [T, 2, H, W]  t -> t+1 (u, v); last frame = -flow_bwd
    flow_bwd    float32 [T, 2, H, W]  t -> t-1; first frame = -flow_fwd
    amodal      bool    [T, O, H, W]  full object extent
    modal       bool    [T, O, H, W]  visible part
    order       int64   [O]           depth rank, 0 = front-most
    labels      uint8   [T, H, W]     0 background (and occluder), 1..O objects
    stationary  bool    [T, O]        forward flow equals the background's
    occluder    bool    [T, H, W]     visible occluder (top layer)
    flow_exact  bool    [T, H, W]     False where flow is estimated (real clip background)
    meta        dict    seed, index, drawn options, sources, homographies, ...
"""

from pipeline.synth.checks import (
                      check_video,
                      composition_check,
                      layer_map,
                      stationary_check,
                      warp_error,
)
from pipeline.synth.config import SynthConfig
from pipeline.synth.dataset import (
                      build_split,
                      build_split_flow,
                      list_split,
                      make_source_bank,
                      read_synth_video,
                      split_contact_sheet,
                      split_render_seed,
                      synth_config,
                      write_flow_store,
                      write_synth_video,
)
from pipeline.synth.geometry import TPS, apply_h
from pipeline.synth.render import draw_num_objects, render_video
from pipeline.synth.sources import SourceBank
from pipeline.synth.textures import procedural_texture
from pipeline.synth.viz import flow_to_color, label_image, video_sheet

__all__ = ["SynthConfig", "SourceBank", "render_video", "draw_num_objects", "video_sheet", "flow_to_color",
           "label_image", "check_video", "warp_error", "composition_check", "stationary_check", "layer_map",
           "procedural_texture", "TPS", "apply_h",
           # dataset stages (pipeline/synth/dataset.py)
           "write_synth_video", "build_split", "list_split", "read_synth_video", "split_contact_sheet",
           "make_source_bank", "synth_config", "split_render_seed", "write_flow_store", "build_split_flow"]
