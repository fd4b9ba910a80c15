"""CNN benchmark cases built as PyTorch modules (random weights) and imported with ``lrpflow.from_torch``.

Used by ``bench_lrp.py`` (networks ``vgg11``, ``resnet18``, ``wide``) and by ``profile_cnn.py``.
Needs torch, torchvision and the lrpflow-onnx plugin; nothing here is imported by lrpflow itself.

    vgg11     torchvision VGG-11 layout (configuration "A") on 32×32×3 with a CIFAR head (512-512-10)
    resnet18  torchvision ``resnet18(num_classes=1000)`` on 64×64×3 (batch norms folded by the importer)
    wide      a small conv net on 128×128×3: conv3×3 3→16, pool, conv3×3 16→32, pool, conv3×3 32→64, GAP, dense 64→10
    lenet     LeNet-5 as PyTorch layers (conv5×5 1→10, avg pool, conv5×5 10→25, avg pool, conv4×4 25→100, avg pool, dense 100→10) on 32×32×1
"""
from __future__ import annotations

from typing import Any

#: name → (input shape C, H, W)
SHAPES = {"vgg11": (3, 32, 32), "resnet18": (3, 64, 64), "wide": (3, 128, 128), "lenet": (1, 32, 32)}


def torch_net(name: str, seed: int = 0) -> Any:
    """The PyTorch module of case ``name`` in eval mode, weights seeded."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if name == "vgg11":
        layers: list[Any] = []
        cin = 3
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                            nn.Linear(512, 10))
    elif name == "resnet18":
        import torchvision

        net = torchvision.models.resnet18(num_classes=1000)
        with torch.no_grad():  # random but not degenerate batch-norm statistics
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
    elif name == "wide":
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(64, 10))
    elif name == "lenet":
        net = nn.Sequential(nn.Conv2d(1, 10, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(10, 25, 5), nn.ReLU(),
                            nn.AvgPool2d(2), nn.Conv2d(25, 100, 4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                            nn.Linear(100, 10))
    else:
        raise KeyError(f"unknown CNN case {name!r}; known: {sorted(SHAPES)}")
    return net.eval()


def build(name: str, seed: int = 0) -> tuple[Any, Any]:
    """``(lrpflow model, torch module)`` of case ``name`` (the model takes NCHW like the module)."""
    import torch

    import lrpflow

    net = torch_net(name, seed)
    example = torch.zeros((1, *SHAPES[name]))
    return lrpflow.from_torch(net, example), net


def inputs(name: str, batch: int, seed: int = 1) -> Any:
    """A float32 NCHW batch in [0, 1) (images after a ReLU-like normalisation: non-negative)."""
    import numpy

    return numpy.random.default_rng(seed).random((batch, *SHAPES[name]), dtype=numpy.float32)
