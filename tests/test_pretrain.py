import torch

from rcnn.boxes import box_iou
from rcnn.data.dataset import Sample
from rcnn.data.shapes import ShapesDataset
from rcnn.pretrain import (
    CONTEXT,
    PretrainConfig,
    RegionClassifier,
    background_windows,
    make_regions,
    pretrain_backbone,
    warp_regions,
)
from rcnn.structures import Annotation
from tests.tiny import tiny_backbone


def test_warp_keeps_the_papers_context_padding():
    # a bright 20x20 square in a dark image: warped to 54 px, the square must fill the
    # middle 54 * (1 - 2 * CONTEXT) pixels, the padding the rest
    image = torch.zeros(1, 1, 100, 100)
    image[..., 40:60, 30:50] = 1.0
    region = warp_regions(image, [torch.tensor([[30.0, 40.0, 50.0, 60.0]])], 54)[0, 0]
    inside = round(54 * CONTEXT) + 1
    assert region[inside:-inside, inside:-inside].min() > 0.99
    assert region[:2].max() < 0.01 and region[:, -2:].max() < 0.01


def test_background_windows_overlap_no_object():
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [70.0, 20.0, 120.0, 90.0]])
    windows = background_windows(boxes, (128, 160), 8, torch.Generator().manual_seed(0))
    assert 0 < len(windows) <= 8
    assert (box_iou(boxes, windows) < 0.3).all()
    assert (windows[:, 2] <= 160).all() and (windows[:, 3] <= 128).all() and (windows >= 0).all()


def test_regions_and_labels_line_up():
    backbone = tiny_backbone()
    annotation = Annotation(
        torch.tensor([[5.0, 5.0, 40.0, 40.0]]), torch.tensor([3]), torch.tensor([False])
    )
    sample = Sample(torch.zeros(3, 64, 96, dtype=torch.uint8), annotation, 0)
    regions, labels = make_regions(
        [sample], backbone, PretrainConfig(background_per_image=2), 32, torch.Generator()
    )
    assert regions.shape[1:] == (3, 32, 32) and len(regions) == len(labels)
    assert labels[0] == 3 and (labels[1:] == 0).all()


def test_pretraining_learns_to_classify_regions():
    # 8 images seen 20 times: the classifier must beat always answering the most common label
    # (background, about a third of the regions), which is where it starts
    torch.manual_seed(0)
    backbone = tiny_backbone()
    dataset = ShapesDataset("train", size=8)
    config = PretrainConfig(
        epochs=20, images_per_batch=8, crop_sizes=(32,), workers=0, learning_rate=0.005
    )
    log = pretrain_backbone(backbone, dataset, config, progress=False)
    assert len(log) == 20
    assert max(entry["accuracy"] for entry in log[-3:]) > 0.45
    assert isinstance(RegionClassifier(backbone, 8).classifier, torch.nn.Linear)
