"""Repack the sal-detectron2 wheel (a cp310 redistribution of upstream detectron2) as py3-none-any.

MaskFormer needs none of detectron2's compiled ops, so the CPython-3.10 ``_C`` extension is
dropped, as is the stray top-level ``tools`` package and the ``numpy<2`` pin.

Usage: python scripts/repack_detectron2.py DIR   (DIR holds the downloaded wheel; output in DIR/out)
"""
import glob
import os
import re
import shutil
import subprocess
import sys


def _edit(path: str, fn) -> None:
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(fn(text))


def repack(work: str) -> str:
    (wheel,) = glob.glob(os.path.join(work, "sal_detectron2-*.whl"))
    unpacked = os.path.join(work, "unpacked")
    subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", unpacked, wheel], check=True)
    (root,) = glob.glob(os.path.join(unpacked, "*"))
    for so in glob.glob(os.path.join(root, "detectron2", "_C.*.so")):
        os.remove(so)
    shutil.rmtree(os.path.join(root, "tools"), ignore_errors=True)
    (info,) = glob.glob(os.path.join(root, "*.dist-info"))
    _edit(os.path.join(info, "WHEEL"), lambda t: re.sub(
        r"Root-Is-Purelib: \w+", "Root-Is-Purelib: true", re.sub(r"Tag: .*", "Tag: py3-none-any", t)))
    _edit(os.path.join(info, "METADATA"),
          lambda t: "".join(line for line in t.splitlines(True) if not re.match(r"Requires-Dist: numpy", line)))
    record = os.path.join(info, "RECORD")
    _edit(record, lambda t: "".join(
        line for line in t.splitlines(True)
        if not (line.startswith("tools/") or re.match(r"detectron2/_C\.", line))))
    out = os.path.join(work, "out")
    os.makedirs(out, exist_ok=True)
    subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", out, root], check=True)
    return out


if __name__ == "__main__":
    print(repack(sys.argv[1]))
