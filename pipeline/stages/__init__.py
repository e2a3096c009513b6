"""The pipeline's stages, each one step over one dataset (see :mod:`pipeline.core.stage`).

Inference stages are listed in graph order in :mod:`pipeline.stages.registry`, each defined in its
own module as ``STAGE``; the training stages (``synth``, ``train_*``, ...) are scripts of
``training/dvc.yaml`` in this folder too. Run one with ``python -m pipeline.stages STAGE DATASET
[VARIANT]``; ``dvc repro`` does it for every stage whose inputs changed.
"""
