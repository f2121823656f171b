"""Everything a detector is judged by.

* ``voc_ap``: PASCAL VOC AP per class and mAP (all-point and VOC2007 11-point), the devkit's
  matching, vectorised;
* ``coco``: COCO AP@[.5:.95], AP50, AP75, AP by size, through pycocotools' COCOeval, and
  COCO-format results files;
* ``recall``: recall, average recall and MABO of region proposals;
* ``report``: metrics.json, the printed table and the precision-recall plot.
"""

from rcnn.evaluation.coco import (
    CocoResult,
    coco_ground_truth,
    coco_results,
    evaluate_coco,
    write_coco_results,
)
from rcnn.evaluation.recall import ProposalRecall, evaluate_proposals
from rcnn.evaluation.report import (
    Evaluation,
    evaluate_detections,
    format_table,
    plot_pr_curves,
    write_metrics,
)
from rcnn.evaluation.voc_ap import VocResult, average_precision, evaluate_voc

__all__ = [
    "CocoResult",
    "Evaluation",
    "ProposalRecall",
    "VocResult",
    "average_precision",
    "coco_ground_truth",
    "coco_results",
    "evaluate_coco",
    "evaluate_detections",
    "evaluate_proposals",
    "evaluate_voc",
    "format_table",
    "plot_pr_curves",
    "write_coco_results",
    "write_metrics",
]
