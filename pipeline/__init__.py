"""motionseg: unsupervised multi-object motion segmentation of video.

The library behind the DVC pipeline: flow-based OCLR proposals refined by
appearance (mask selector + object-centric corrector), every stage reading and
writing Zarr v3 artifacts. See README.md for the stage graph; one call for your own
video: ``from pipeline.api import segment``.
"""

__version__ = "0.1.0"

