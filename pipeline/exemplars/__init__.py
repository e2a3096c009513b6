"""Exemplar choice, in one home: frame scores (relative error area, temporal consistency), the
ranking into each object's exemplar frames and their weights (:mod:`.scoring`), and the
selection-quality evaluation against ground truth (:mod:`.evaluate`)."""
