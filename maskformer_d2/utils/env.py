"""Print the versions of what maskformer_d2 runs on, like detectron2's collect_env.

``python -m maskformer_d2.utils.env`` prints a table; ``--check`` exits non-zero when anything is missing.
"""
import argparse
import importlib
import platform
import sys
from typing import List, Tuple

_MODULES = [
    ("torch", "torch"), ("torchvision", "torchvision"), ("detectron2", "detectron2"),
    ("fvcore", "fvcore"), ("pycocotools", "pycocotools"), ("cv2", "opencv"), ("scipy", "scipy"),
    ("panopticapi", "panopticapi"), ("numpy", "numpy"), ("PIL", "Pillow"), ("matplotlib", "matplotlib"),
]


def collect(include_package: bool = True) -> Tuple[List[Tuple[str, str]], List[str]]:
    rows, missing = [("python", sys.version.split()[0]), ("platform", platform.platform())], []
    for mod, name in _MODULES:
        try:
            m = importlib.import_module(mod)
            rows.append((name, getattr(m, "__version__", "installed")))
        except Exception as e:  # an import error of any kind means "not usable"
            rows.append((name, f"MISSING ({type(e).__name__}: {e})"))
            missing.append(name)
    if "torch" not in missing:
        import torch

        rows.append(("CUDA available", str(torch.cuda.is_available())))
        if torch.cuda.is_available():
            rows.append(("GPU", torch.cuda.get_device_name(0)))
    if "torchvision" not in missing and "torch" not in missing:
        try:
            import torch
            import torchvision

            torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
            rows.append(("torchvision ops", "ok"))
        except Exception as e:
            rows.append(("torchvision ops", f"BROKEN ({e})"))
            missing.append("torchvision ops")
    if not include_package:
        return rows, missing
    try:
        import maskformer_d2

        rows.append(("maskformer_d2", maskformer_d2.__version__))
    except Exception as e:
        rows.append(("maskformer_d2", f"BROKEN ({type(e).__name__}: {e})"))
        missing.append("maskformer_d2")
    return rows, missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 when something is missing")
    ap.add_argument("--deps-only", action="store_true", help="with --check: ignore maskformer_d2 itself")
    args = ap.parse_args()
    rows, missing = collect(include_package=not args.deps_only)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if missing:
        print(f"missing or broken: {', '.join(missing)}; run `make setup` (scripts/setup_env.sh)")
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
