"""Selector: per-frame error maps of flow proposals. :mod:`.model` (network, loader), :mod:`.train`,
:mod:`.infer` (error maps and relative-error scores of a video)."""
