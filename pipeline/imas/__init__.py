"""IMAS: appearance segmentation learned from the target videos' own motion (motion-supervised object
discovery with a learnable residual pathway, then refinement with CRF-refined masks and a semantic
constraint). :mod:`.model` (network, loader), :mod:`.losses`, :mod:`.train` (both stages and the
label-free object channel), :mod:`.infer` (the ``imas`` mask stage)."""
