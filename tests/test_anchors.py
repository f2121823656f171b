import torch

from rcnn.anchors import AnchorConfig, AnchorGenerator, generate_anchors, shift_anchors

# py-faster-rcnn's generate_anchors() table (inclusive pixel coordinates), from its docstring.
PY_FASTER_RCNN_TABLE = torch.tensor(
    [
        [-84.0, -40.0, 99.0, 55.0],
        [-176.0, -88.0, 191.0, 103.0],
        [-360.0, -184.0, 375.0, 199.0],
        [-56.0, -56.0, 71.0, 71.0],
        [-120.0, -120.0, 135.0, 135.0],
        [-248.0, -248.0, 263.0, 263.0],
        [-36.0, -80.0, 51.0, 95.0],
        [-80.0, -168.0, 95.0, 183.0],
        [-168.0, -344.0, 183.0, 359.0],
    ]
)


def test_generate_anchors_reproduces_the_original_table():
    expected = PY_FASTER_RCNN_TABLE.clone()
    expected[:, 2:] += 1  # the same boxes in the continuous convention
    torch.testing.assert_close(generate_anchors(), expected, rtol=0, atol=0)


def test_anchor_sides_follow_scales_and_ratios():
    anchors = generate_anchors()
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    # ratio 1: exactly 128, 256, 512 (the seeds' three scales)
    assert widths[3:6].tolist() == [128.0, 256.0, 512.0]
    assert heights[3:6].tolist() == [128.0, 256.0, 512.0]
    # ratios h/w of about 1/2 and 2, area about scale^2
    torch.testing.assert_close(heights[:3] / widths[:3], torch.full((3,), 0.5), atol=0.03, rtol=0)
    torch.testing.assert_close(heights[6:] / widths[6:], torch.full((3,), 2.0), atol=0.1, rtol=0)
    # all anchors of a cell share the cell's centre (8, 8)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres, torch.full((9, 2), 8.0))


def test_anchor_counts_from_the_seeds():
    generator = AnchorGenerator(AnchorConfig())
    # 800x600 at stride 16: a 50 x 38 map (the seeds), 9 anchors per cell
    assert generator((38, 50)).shape == (17_100, 4)
    assert generator((50, 50)).shape == (22_500, 4)


def test_shift_order_is_height_width_anchor():
    cell = generate_anchors(scales=(2.0,), ratios=(0.5, 1.0))
    anchors = shift_anchors(cell, (2, 3), stride=16).reshape(2, 3, 2, 4)
    torch.testing.assert_close(anchors[1, 2, 0], cell[0] + torch.tensor([32.0, 16.0, 32.0, 16.0]))
    torch.testing.assert_close(anchors[0, 1, 1], cell[1] + torch.tensor([16.0, 0.0, 16.0, 0.0]))


def test_empty_grid():
    assert AnchorGenerator()((0, 5)).shape == (0, 4)
