"""Neural models of the pipeline.

* :mod:`pipeline.models.oclr`: the OCLR flow-only layered segmentation model
  (:class:`OCLR`, :class:`OCLRConfig`, :func:`compose_modal`).
* :mod:`pipeline.models.losses`: its losses and the Hungarian matching of
  predicted layers to GT objects (reusable by later models).
"""

from .losses import (DEFAULT_LOSS_WEIGHTS, bce_probs, boundary_band, boundary_bce, hungarian_match, match_batch,
                     oclr_loss, order_loss)
from .oclr import OCLR, OCLRConfig, compose_modal, make_flow_input, order_to_ranks

__all__ = ["OCLR", "OCLRConfig", "compose_modal", "make_flow_input", "order_to_ranks", "DEFAULT_LOSS_WEIGHTS",
           "hungarian_match", "match_batch", "boundary_band", "boundary_bce", "bce_probs", "order_loss", "oclr_loss"]
