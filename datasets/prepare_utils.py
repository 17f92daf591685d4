"""What the datasets/prepare_*.py scripts share: their command line and their input checks."""
import argparse
import os
from typing import Iterable


def parser(doc: str, holds: str) -> argparse.ArgumentParser:
    """An argument parser with the script's docstring and ``--root`` (the datasets folder)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"),
                    help=f"folder holding {holds} (default: $DETECTRON2_DATASETS or ./datasets)")
    return ap


def require(paths: Iterable[str], how: str) -> None:
    """Raise FileNotFoundError naming the first missing path and how to get it."""
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing; {how}")
