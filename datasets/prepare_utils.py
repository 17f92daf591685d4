"""What the datasets/prepare_*.py scripts share: their command line, their input checks and their
entry point."""
import argparse
import logging
import os
import sys
from typing import Callable, Iterable


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


def run(main: Callable[[], int]) -> None:
    """Run a script's ``main`` as the program: its log messages (INFO and up) printed bare, its
    return value the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
