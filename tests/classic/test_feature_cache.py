import torch

from rcnn.classic.feature_cache import FC7, RegionCacheWriter, read_region_cache


def write_two_images(directory, key="net-1"):
    writer = RegionCacheWriter(directory, key, num_classes=3, regression_iou=0.6)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 12.0], [20.0, 20.0, 30.0, 30.0], [50, 50, 60, 60]])
    regions = torch.cat((gt, proposals))
    pool5 = torch.arange(5 * 6, dtype=torch.float32).reshape(5, 6)
    fc7 = -torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4)
    writer.add(regions, gt, torch.tensor([1, 3]), pool5, fc7)
    # an image without objects: all its regions are background, none an example
    writer.add(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), pool5[:3], fc7[:3])
    return writer.finish(), regions, pool5, fc7


def test_cache_round_trip_keeps_features_ground_truth_and_examples(tmp_path):
    written, regions, pool5, fc7 = write_two_images(tmp_path)
    cached = read_region_cache(tmp_path, "net-1")
    for found in (written, cached):
        assert found.features.dtype == torch.float16
        assert torch.equal(found.features.float(), torch.cat((fc7, fc7[:3])))
        assert found.image_index.tolist() == [0] * 5 + [1] * 3
        assert found.labels.tolist() == [1, 3, 0, 0, 0, 0, 0, 0]
        assert torch.equal(found.boxes, torch.cat((regions, regions[2:])))
        # IoU with each class's ground truth: class 2 has none; the last box overlaps nothing
        expected_iou = torch.tensor(
            [[1, 0, 0], [0, 0, 1], [10 / 12, 0, 0], [0, 0, 0.25], [0, 0, 0]] + [[0, 0, 0]] * 3
        )
        assert torch.allclose(found.class_iou, expected_iou.float())
        # examples: IoU >= 0.6 with a ground-truth box (the two boxes and the first proposal)
        assert torch.equal(found.pool5.float(), pool5[[0, 1, 2]])
        assert found.example_labels.tolist() == [1, 3, 1]
        assert torch.equal(found.example_targets, regions[[0, 1, 0]])
        assert torch.equal(found.example_boxes, regions[[0, 1, 2]])


def test_a_cache_of_another_network_or_a_torn_one_is_not_read(tmp_path):
    write_two_images(tmp_path)
    assert read_region_cache(tmp_path, "net-2") is None
    with open(tmp_path / FC7, "ab") as file:
        file.write(b"\0\0")
    assert read_region_cache(tmp_path, "net-1") is None
    # a new writer removes the old index first: a crash while writing leaves no cache
    writer = RegionCacheWriter(tmp_path, "net-1", 3, 0.6)
    assert read_region_cache(tmp_path, "net-1") is None
    writer.fc7.close(), writer.pool5.close()
