"""Video object segmentation metrics (DAVIS protocol), split like davis2017-evaluation:
:mod:`.measures` (per-frame J and F, statistics), :mod:`.evaluation` (sequences and folders,
protocols, label reading), :mod:`.results` (rows, summaries, CSV / JSON)."""

from pipeline.metrics.evaluation import (  # noqa: F401
    EMPTY_PRED_ID,
    MATCH_ON,
    MERGED_PRED_ID,
    PROTOCOLS,
    RESIZE_MODES,
    ObjectResult,
    SequenceResult,
    evaluate_folders,
    evaluate_sequence,
    list_sequences,
    read_label_png,
    resize_labels,
)
from pipeline.metrics.measures import (  # noqa: F401
    DEFAULT_BOUND_TH,
    bound_pixels,
    boundary_map,
    db_statistics,
    disk,
    f_measure,
    iou,
)
from pipeline.metrics.results import (  # noqa: F401
    OBJECT_COLUMNS,
    SEQUENCE_COLUMNS,
    STAT_KEYS,
    object_rows,
    sequence_rows,
    summarize,
    summarize_rows,
    summary_dict,
    write_json,
    write_object_csv,
    write_sequence_csv,
)
