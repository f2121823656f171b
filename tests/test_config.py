import json

import pytest

from rcnn.config import from_dict, load_file, merge, parse_overrides, to_dict
from rcnn.errors import RcnnError
from rcnn.models.faster_rcnn import FasterRCNNConfig


def test_round_trip_through_json():
    config = FasterRCNNConfig()
    data = json.loads(json.dumps(to_dict(config)))
    assert from_dict(FasterRCNNConfig, data) == config


def test_overrides_reach_nested_settings_and_convert_types():
    overrides = parse_overrides(
        ["rpn.proposals.pre_nms_top_n=[3000, 1000]", "rpn.loss.box_weight=1", "scheme=alternating"]
    )
    config = merge(FasterRCNNConfig(), overrides)
    assert config.rpn.proposals.pre_nms_top_n == (3000, 1000)
    assert config.rpn.loss.box_weight == 1.0 and isinstance(config.rpn.loss.box_weight, float)
    assert config.scheme == "alternating"
    assert config.rpn.proposals.post_nms_top_n == (2000, 300)  # untouched settings keep defaults


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("rpn.proposals.nms_thresh=0.6", "unknown setting rpn.proposals.nms_thresh; valid here: "),
        ("rpn.proposals.min_size=big", "rpn.proposals.min_size: expected float, got 'big'"),
        ("scheme=joint", "scheme: 'joint' is not one of"),
        ("rpn.proposals.pre_nms_top_n=[1, 2, 3]", "expected 2 values, got 3"),
        ("rpn.targets.batch_size_per_image=2.5", "expected int, got 2.5"),
    ],
)
def test_bad_settings_name_the_key(assignment, message):
    with pytest.raises(RcnnError, match=message.replace("[", r"\[")):
        merge(FasterRCNNConfig(), parse_overrides([assignment]))


def test_malformed_assignment():
    with pytest.raises(RcnnError, match="expected KEY=VALUE"):
        parse_overrides(["epochs"])


def test_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('scheme = "non-approximate-joint"\n[rpn.anchors]\nscales = [2, 4, 8]\n')
    config = merge(FasterRCNNConfig(), load_file(path))
    assert config.rpn.anchors.scales == (2.0, 4.0, 8.0) and config.scheme == "non-approximate-joint"
    broken = tmp_path / "broken.toml"
    broken.write_text("scheme = \n")
    with pytest.raises(RcnnError, match=r"broken\.toml: not a valid toml file"):
        load_file(broken)
    with pytest.raises(RcnnError, match=r"missing\.toml: cannot read"):
        load_file(tmp_path / "missing.toml")
