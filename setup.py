"""The one compiled part: greedy NMS in C (rcnn/ops/_greedy_nms.c). Optional: where no C
compiler is found the install goes on and rcnn.ops.nms uses its PyTorch path."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rcnn.ops._greedy_nms",
            ["rcnn/ops/_greedy_nms.c"],
            # no fused multiply-adds: each IoU must round as PyTorch's does
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
