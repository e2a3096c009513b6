"""motionseg: unsupervised multi-object motion segmentation of video.

The library behind the DVC pipeline: flow-based OCLR proposals refined by
appearance (mask selector + object-centric corrector), every stage reading and
writing Zarr v3 artifacts. See README.md for the stage graph.
"""

__version__ = "0.1.0"
