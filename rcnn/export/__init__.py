"""Export a trained Faster R-CNN as ONNX (``rcnn export RUN --onnx FILE``).

``rcnn.export.pipeline`` is the test-time path as one module, ``rcnn.export.onnx_ops`` writes
its custom ops (NMS, RoI pooling, RoIAlign, the test-time resize) as standard ONNX
operators, and ``rcnn.export.onnx_file`` exports and writes the file. The ONNX packages are an
optional extra (``pip install 'rcnn[export]'``); nothing here needs them until an export runs.
"""

from rcnn.export.onnx_file import export_onnx, export_run, to_onnx

__all__ = ["export_onnx", "export_run", "to_onnx"]
