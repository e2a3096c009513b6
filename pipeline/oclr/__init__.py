"""OCLR: flow-only layered object segmentation. :mod:`.model` (network, loader), :mod:`.losses`,
:mod:`.train` (synthetic-data training), :mod:`.infer` (proposals of a video)."""
