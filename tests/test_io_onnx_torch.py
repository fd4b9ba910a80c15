"""``lrpflow.from_torch`` and TorchScript files (``load_model("m.pt")``): run only where torch is installed.

CI has no torch: there only the refusal without torch is checked.
"""
from __future__ import annotations

import sys

import numpy
import pytest

pytest.importorskip("onnx")
pytest.importorskip("lrpflow_onnx")

import lrpflow  # noqa: E402


def test_from_torch_without_torch_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(lrpflow.PluginError, match="need PyTorch"):
        lrpflow.from_torch(object(), numpy.zeros((1, 3)))
    p = tmp_path / "m.pt"
    p.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(lrpflow.LrpflowError, match="PyTorch"):
        lrpflow.load_model(p, input_shape=(3,))


def _net(torch):
    nn = torch.nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
                        nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.SiLU(), SE(8), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("dynamo", [True, False])
def test_from_torch_matches_the_module(dynamo):
    torch = pytest.importorskip("torch")
    net = _net(torch)
    x = numpy.random.default_rng(0).normal(size=(3, 3, 12, 12)).astype(numpy.float32)
    model = lrpflow.from_torch(net, torch.from_numpy(x[:1]), dynamo=dynamo)
    assert model.layout == "NCHW"
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    xt = torch.from_numpy(x.astype(numpy.float64)).requires_grad_(True)
    net64 = _net(torch).double()
    y = net64(xt)
    target = y.argmax(1)
    y.gather(1, target[:, None]).sum().backward()
    out = lrpflow.explain(model, x.astype(numpy.float64), rule="gradient_x_input", target=target.numpy(),
                          dtype="float64")
    numpy.testing.assert_allclose(out.logits, want, rtol=1e-4, atol=1e-5)
    numpy.testing.assert_allclose(out.relevance, (xt.grad * xt).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not net.training  # eval mode kept (it was eval)


def test_torchscript_files_load_with_an_input_shape(tmp_path):
    torch = pytest.importorskip("torch")
    net = _net(torch)
    path = tmp_path / "net.pt"
    torch.jit.script(net).save(str(path))
    with pytest.raises(lrpflow.ConfigError, match="input_shape"):
        lrpflow.load_model(path)
    model = lrpflow.load_model(path, input_shape=(3, 12, 12))
    x = numpy.random.default_rng(1).normal(size=(2, 3, 12, 12)).astype(numpy.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(lrpflow.explain(model, x, rule="epsilon").logits, want, rtol=1e-4, atol=1e-5)
    pickled = tmp_path / "pickled.pt"
    torch.save(net.state_dict(), str(pickled))  # a pickle, not TorchScript
    with pytest.raises(lrpflow.ModelFormatError, match="not a TorchScript file.*from_torch"):
        lrpflow.load_model(pickled, input_shape=(3, 12, 12))
