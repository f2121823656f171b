import pytest
import torch


def _random_rois(n, images, generator, size=200.0, dtype=torch.float64):
    """``(n, 5)`` RoIs in image pixels: some partly or wholly off a ~size-pixel image, some tiny,
    some huge (several times the image), spread over ``images`` images."""
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * size * 1.4 - size * 0.2
    side = torch.exp(torch.rand(n, 2, generator=generator, dtype=dtype) * 7.0 - 1.0)  # 0.4..400
    batch = torch.randint(0, images, (n, 1), generator=generator).to(dtype)
    return torch.cat([batch, xy, xy + side], dim=1)


@pytest.fixture
def random_rois():
    """The RoI generator above, as a fixture: ``random_rois(n, images, generator)``."""
    return _random_rois
