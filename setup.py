# All metadata, dependencies and package data are in pyproject.toml; this file only lets tools
# that still call `setup.py` directly find the build.
from setuptools import setup

setup()
