"""MAMP: self-supervised video features (Lab reconstruction through feature affinity) and
motion-aware mask propagation. :mod:`.model` (encoder, loader), :mod:`.train`, :mod:`.propagate` and
:mod:`.match` / :mod:`.align` (inference), :mod:`.infer` (the propagate stages)."""
