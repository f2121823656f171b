"""Running an op's tests on both of its paths: the C kernel and the PyTorch fallback."""

import pytest


def on_both_paths(module, kernel: str, what: str):
    """An autouse fixture ``path`` for a test module: each of its tests runs twice, with
    ``module.<kernel>`` as built ("native") and set to None, so the op takes its PyTorch path
    ("torch"). ``what`` names the two paths in the fixture's docstring."""

    @pytest.fixture(autouse=True, params=["native", "torch"])
    def path(request, monkeypatch):
        if request.param == "torch":
            monkeypatch.setattr(module, kernel, None)
        return request.param

    path.__doc__ = f"Every test runs on both paths of {what}: the C kernel and PyTorch's."
    return path
