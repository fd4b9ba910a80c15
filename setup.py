"""Packages: ``lrpflow*`` from ``lrpflow/``, and the top-level Hydra config tree ``conf/`` shipped as ``lrpflow.conf``.

Everything else about the distribution is in pyproject.toml; this file only maps ``conf/`` into
the package (DESIGN §1: ``conf/`` lives beside ``lrpflow/``), which pyproject's automatic package
discovery cannot combine with a second source folder.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["lrpflow*"]) + ["lrpflow.conf"], package_dir={"lrpflow.conf": "conf"})
