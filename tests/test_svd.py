import pytest
import torch
from torch import nn

from rcnn.cli import main
from rcnn.errors import RcnnError
from rcnn.svd import compress_fc_layers, parse_ranks, truncated_svd


def layer(u=24, v=40, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(v, u, dtype=dtype)


def composed_weight(pair: nn.Sequential) -> torch.Tensor:
    """U_t (Sigma_t V_t^T): the one (u, v) matrix the two layers apply."""
    return pair[1].weight @ pair[0].weight


def test_full_rank_reproduces_the_layer():
    original = layer()
    pair = truncated_svd(original, 24)
    x = torch.randn(50, 40)
    torch.testing.assert_close(pair(x), original(x), rtol=1e-5, atol=1e-5)
    assert pair[0].bias is None
    torch.testing.assert_close(pair[1].bias, original.bias, rtol=0, atol=0)


@pytest.mark.parametrize("rank", [1, 5, 12, 23])
def test_low_rank_error_is_what_the_discarded_singular_values_say(rank):
    original = layer(dtype=torch.float64)
    sigma = torch.linalg.svdvals(original.weight.detach())
    pair = truncated_svd(original, rank)
    difference = original.weight - composed_weight(pair)
    # ||W - W_t||_F = sqrt(sum of the discarded sigma^2); ||W - W_t||_2 = sigma_{t+1}
    expected = sigma[rank:].square().sum().sqrt()
    torch.testing.assert_close(torch.linalg.matrix_norm(difference), expected)
    torch.testing.assert_close(torch.linalg.matrix_norm(difference, ord=2), sigma[rank])
    x = torch.randn(100, 40, dtype=torch.float64)
    error = (original(x) - pair(x)).norm(dim=1)
    assert (error <= sigma[rank] * x.norm(dim=1) * (1 + 1e-9)).all()
    # the kept directions are exact: inputs in the span of the top t right-singular vectors
    _, _, right_t = torch.linalg.svd(original.weight.detach())
    kept = torch.randn(7, rank, dtype=torch.float64) @ right_t[:rank]
    torch.testing.assert_close(pair(kept), original(kept))


def test_parameters_shrink_to_t_times_u_plus_v():
    pair = truncated_svd(layer(u=64, v=1568), 16)
    assert pair[0].weight.shape == (16, 1568) and pair[1].weight.shape == (64, 16)
    assert sum(p.numel() for p in pair.parameters()) == 16 * (64 + 1568) + 64  # + the bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_are_kept(dtype):
    original = layer(dtype=dtype)
    pair = truncated_svd(original, 3)
    assert all(p.dtype == dtype and p.device == original.weight.device for p in pair.parameters())


@pytest.mark.parametrize("rank", [0, -1, 25])
def test_rank_out_of_range_is_refused(rank):
    with pytest.raises(RcnnError, match="1 to 24"):
        truncated_svd(layer(), rank)


def test_compress_errors_name_the_problem_and_change_nothing():
    with pytest.raises(RcnnError, match="no single fully connected fc6 and fc7"):
        compress_fc_layers(nn.Sequential(nn.Conv2d(3, 8, 3)), (4, 4))
    head = nn.Sequential()
    head.fc6, head.fc7 = nn.Linear(40, 24), nn.Linear(24, 24)
    with pytest.raises(RcnnError, match=r"rank 30 for fc7 \(24 x 24\) must lie in 1 to 24"):
        compress_fc_layers(head, (8, 30))
    assert isinstance(head.fc6, nn.Linear)  # fc6's rank was fine, but nothing was replaced
    lines = compress_fc_layers(head, (8, 4))
    assert lines == [
        "fc6 24x40: rank 8, 984 -> 536 parameters",
        "fc7 24x24: rank 4, 600 -> 216 parameters",
    ]


@pytest.mark.parametrize(
    ("text", "ranks"), [("1024,256", (1024, 256)), (" 64 , 32 ", (64, 32)), ("1,1", (1, 1))]
)
def test_parse_ranks(text, ranks):
    assert parse_ranks(text) == ranks


@pytest.mark.parametrize("text", ["", "64", "64,32,16", "a,b", "64,", "0,32", "-4,8", "6.5,3"])
def test_parse_ranks_errors_say_what_is_expected(text):
    with pytest.raises(RcnnError, match="expected two positive integers R6,R7"):
        parse_ranks(text)


@pytest.mark.parametrize("command", ["eval", "detect"])
def test_cli_svd_rank_error_is_one_clear_line(command, capsys, tmp_path):
    where = ["--data", "shapes"] if command == "eval" else ["shapes"]
    status = main([command, str(tmp_path), *where, "--svd-rank", "64x32"])
    error = capsys.readouterr().err
    assert status == 1
    assert error.startswith("rcnn: error: --svd-rank '64x32': expected two positive integers")
    assert error.count("\n") == 1
