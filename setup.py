"""Minimal setup: maps the top-level folders into the ``postformer`` import package.

Metadata lives in pyproject.toml. ``kernels/`` becomes ``postformer.kernels`` and so on;
sub-packages are found automatically, so a new op family needs no change here.
"""

from setuptools import find_packages, setup

ROOTS = {
    "postformer": "postformer",
    "postformer.kernels": "kernels",
    "postformer.arch": "arch",
    "postformer.train": "train",
    "postformer.scaling": "scaling",
}

packages, package_dir = [], {}
for name, folder in ROOTS.items():
    package_dir[name] = folder
    packages.append(name)
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
