"""Packages: ``lrpflow*`` from ``lrpflow/``, and the top-level Hydra config tree ``conf/`` shipped as ``lrpflow.conf``.

Everything else about the distribution is in pyproject.toml; this file only maps ``conf/`` into
the package (DESIGN §1: ``conf/`` lives beside ``lrpflow/``), which pyproject's automatic package
discovery cannot combine with a second source folder.
"""
from setuptools import find_namespace_packages, find_packages, setup

# hydra_plugins: lrpflow's Ray launcher, in Hydra's plugin namespace package
setup(packages=find_packages(include=["lrpflow*"]) + ["lrpflow.conf"] + find_namespace_packages(include=["hydra_plugins*"]),
      package_dir={"lrpflow.conf": "conf"})
