import torch

from rcnn.box_coder import BoxCoder
from rcnn.proposal_targets import ProposalTargetConfig, proposal_targets


def random_proposals(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 300
    wh = torch.rand(n, 2, generator=generator) * 150 + 8
    return torch.cat([xy, xy + wh], dim=1)


def test_fractions_ranges_and_targets():
    g = torch.Generator().manual_seed(0)
    proposals = random_proposals(2000, g)
    gt = torch.tensor([[50.0, 50.0, 150.0, 200.0], [200.0, 100.0, 330.0, 180.0]])
    labels_gt = torch.tensor([3, 1])
    out = proposal_targets(proposals, gt, labels_gt, generator=g)
    fg = out.labels > 0
    assert out.rois.shape == (128, 4) and int(fg.sum()) == 32  # 25% of 128
    from rcnn.boxes import box_iou

    best = box_iou(gt, out.rois).max(dim=0)
    assert (best.values[fg] >= 0.5).all()
    assert ((best.values[~fg] >= 0.1) & (best.values[~fg] < 0.5)).all()
    assert torch.equal(out.labels[fg], labels_gt[best.indices[fg]])
    expected = BoxCoder.fast_rcnn().encode(out.rois[fg], gt[best.indices[fg]])
    torch.testing.assert_close(out.targets[fg], expected)
    assert (out.targets[~fg] == 0).all()
    candidates = torch.cat([proposals, gt])
    assert torch.equal(candidates[out.indices], out.rois)


def test_ground_truth_joins_the_proposals():
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    out = proposal_targets(torch.zeros(0, 4), gt, torch.tensor([2]))
    assert out.labels.tolist() == [2]
    torch.testing.assert_close(out.rois, gt)
    torch.testing.assert_close(out.targets, torch.zeros(1, 4))


def test_image_without_objects_gives_background_only():
    g = torch.Generator().manual_seed(1)
    out = proposal_targets(
        random_proposals(300, g), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    )
    assert out.rois.shape == (128, 4) and (out.labels == 0).all()


def test_hierarchical_sampling_size_and_gradient_gather():
    g = torch.Generator().manual_seed(2)
    proposals = random_proposals(500, g).requires_grad_()
    gt = torch.tensor([[50.0, 50.0, 150.0, 200.0]])
    config = ProposalTargetConfig(batch_size_per_image=64)  # Fast R-CNN: 2 images x 64 RoIs
    out = proposal_targets(proposals, gt, torch.tensor([1]), config, generator=g)
    assert out.rois.shape[0] <= 64 and not out.rois.requires_grad
    gathered = torch.cat([proposals, gt])[out.indices]  # what joint training does
    gathered.sum().backward()
    assert proposals.grad.sum() > 0
