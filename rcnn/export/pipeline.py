"""A trained Faster R-CNN's whole test-time path as one module: an image in, detections out.

``DetectionPipeline(detector)(image)`` runs what ``Detector`` runs on one image, through the
same code (``Detector.detect_samples``):

1. resize the image as the model was tested: the shorter side to the test size unless the
   longer side would pass the maximum (``resize_scale``), bilinear, antialiased when shrinking
   (``resize``);
2. normalise it with the backbone's pixel statistics and pad it to the stride (``make_batch``);
3. the trunk, the RPN and its proposal layer, RoI pooling, the Fast R-CNN head, per-class
   decoding, NMS and the top 100 (``FasterRCNN.forward``);
4. the boxes back in the original image's pixels (``rescale``).

Under ``torch.export`` step 1 is one node, ``rcnn::resize_for_test``: its output size is
computed from the input size with Python's floats and rounding, which a traced graph cannot
hold; ``rcnn.export.onnx_ops`` writes it with ONNX operators in float64. NMS, RoI pooling and
RoIAlign turn into single nodes on their own (``rcnn.ops``). One more change for tracing:
PyTorch's batch_norm asks whether its input is empty, which the tracer cannot answer for a
head that sees a data-dependent number of RoIs, so a model with BatchNorm2d layers (a ResNet
trained from scratch) is exported from a copy where they are FrozenBatchNorm2d layers with
the same statistics: the same map at test time, up to float32 rounding (about 1e-7).

Shapes: the image is uint8 ``(H, W, 3)`` RGB (the layout of a decoded image file); the outputs
are boxes ``(D, 4)`` float32 xyxy, labels ``(D,)`` int64 in ``[1, K]`` and scores ``(D,)``
float32, best first.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from rcnn.backbones import FrozenBatchNorm2d
from rcnn.data.dataset import Sample
from rcnn.data.transforms import resize, resize_scale
from rcnn.detector import Detector
from rcnn.errors import RcnnError
from rcnn.models.faster_rcnn import FasterRCNN
from rcnn.structures import Annotation


class DetectionPipeline(nn.Module):
    """``image (H, W, 3) uint8 -> (boxes (D, 4), labels (D,), scores (D,))`` of a Faster R-CNN."""

    def __init__(self, detector: Detector):
        super().__init__()
        if not isinstance(detector.model, FasterRCNN):
            raise RcnnError(
                f"only Faster R-CNN can be exported; this detector is a "
                f"{type(detector.model).__name__}"
            )
        if any(isinstance(layer, nn.BatchNorm2d) for layer in detector.model.modules()):
            model = _freeze_batch_norms(copy.deepcopy(detector.model))
            detector = Detector(model, detector.config, detector.class_names, model.pixel_stats)
        self.detector = detector
        self.model = detector.model  # a submodule, so that its weights are the graph's

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        transform = self.detector.transform  # the Detector's test-time resize
        # 1. (H, W, 3) -> (3, H, W) -> resized (3, h, w); the scale as a float64 0-d tensor
        resized, scale = torch.ops.rcnn.resize_for_test(
            image.permute(2, 0, 1), transform.min_sizes[0], transform.max_size
        )
        # 2-4. as Detector.detect_samples: a float scale and a 0-d tensor act alike there
        (found,) = self.detector.detect_samples([Sample(resized, Annotation.empty(), 0, scale)])
        return found.boxes, found.labels, found.scores


def _freeze_batch_norms(module: nn.Module) -> nn.Module:
    """``module`` with each BatchNorm2d replaced by a FrozenBatchNorm2d of its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.load_state_dict(child.state_dict(), strict=False)  # less num_batches_tracked
            setattr(module, name, frozen)
        else:
            _freeze_batch_norms(child)
    return module


@torch.library.custom_op("rcnn::resize_for_test", mutates_args=())
def resize_for_test(image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, Tensor]:
    """uint8 ``(3, H, W)`` -> (uint8 ``(3, h, w)``, the scale as a float64 0-d tensor):
    the test-time resize of ``Detector`` (``TrainTransform`` with one size and no flip)."""
    scale = resize_scale((image.shape[-2], image.shape[-1]), min_size, max_size)
    resized, _ = resize(image, torch.zeros(0, 4), scale)
    return resized, torch.tensor(scale, dtype=torch.float64)


@resize_for_test.register_fake
def _(image, min_size, max_size):
    ctx = torch.library.get_ctx()  # the size is known only at run time
    size = (ctx.new_dynamic_size(min=1), ctx.new_dynamic_size(min=1))
    return image.new_empty((3, *size)), image.new_empty((), dtype=torch.float64)
