"""The compiled parts, plain C against Python's buffer protocol: NMS's greedy loop
(rcnn/ops/_greedy_nms.c) and RoIAlign without box gradients (rcnn/ops/_roi_align.c).
Optional: where no C compiler is found the install goes on and the ops use their PyTorch paths."""

from setuptools import Extension, setup


def kernel(name: str, *flags: str) -> Extension:
    return Extension(
        f"rcnn.ops.{name}",
        [f"rcnn/ops/{name}.c"],
        extra_compile_args=["-O3", *flags],
        optional=True,
    )


# NMS without fused multiply-adds: its IoUs must round as PyTorch's do
setup(ext_modules=[kernel("_greedy_nms", "-ffp-contract=off"), kernel("_roi_align")])
