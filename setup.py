from setuptools import find_packages, setup

setup(
    name="maskformer_d2",
    version="0.1.0",
    description="MaskFormer (per-pixel classification is not all you need) as a detectron2 extension",
    packages=find_packages(include=["maskformer_d2", "maskformer_d2.*"]),
    package_data={"maskformer_d2.data.datasets": ["categories/*.json"]},
    python_requires=">=3.9",
    # Dependencies are installed by scripts/setup_env.sh from requirements.txt (detectron2 is not on
    # PyPI under its own name), so pip does not try to resolve them here.
    install_requires=[],
)
