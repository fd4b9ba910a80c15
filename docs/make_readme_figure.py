"""Regenerate docs/lenet5_rules.png: LeNet-5 on four MNIST test digits, five methods.

Usage: python docs/make_readme_figure.py [--shared ../shared]
"""
from __future__ import annotations

import argparse
import pathlib

import numpy

import lrpflow


def main() -> None:
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=str(here.parents[1] / "shared"))
    args = parser.parse_args()
    shared = pathlib.Path(args.shared)
    net = lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")
    x = lrpflow.io.load_data(shared / "data" / "MNIST" / "test_images.mat", divide=127.5, shift=-1.0,
                             reshape=(28, 28, 1), pad=2, pad_value=-1.0)[:4].astype(numpy.float64)
    methods = {"eps 0.01": {"rule": "epsilon", "epsilon": 0.01}, "a2b1": {"rule": "alpha_beta", "alpha": 2.0},
               "eps+": {"composite": "epsilon_plus"},
               "gamma-box": {"composite": "epsilon_gamma_box", "low": -1.0, "high": 1.0},
               "gradient": {"rule": "gradient"}}
    rels = {name: lrpflow.explain(net, x, dtype="float64", **kw).relevance for name, kw in methods.items()}
    lrpflow.render.heatmap_grid(rels, x, title="LeNet-5 rules", path=str(here / "lenet5_rules.png"))


if __name__ == "__main__":
    main()
