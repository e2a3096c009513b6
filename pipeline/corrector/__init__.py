"""Corrector: appearance-based correction of proposals from exemplar frames. :mod:`.model`
(network, loader), :mod:`.train` (synthetic data), :mod:`.adapt` (label-free adaptation to a
dataset), :mod:`.infer` (corrected masks of a video)."""
