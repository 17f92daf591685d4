#!/usr/bin/env python3
"""Write semantic label PNGs from COCO-panoptic annotations (every segment, crowd included, gets
its class; unlabeled pixels 255).

Default (COCO): reads  coco/annotations/panoptic_{train,val}2017.json + coco/panoptic_{train,val}2017/
                writes coco/panoptic_semseg_{train,val}2017/*.png (contiguous ids 0..132),
used by coco_2017_{train,val}_panoptic_with_sem_seg.

Any other COCO-panoptic dataset: --panoptic-json J --panoptic-root P --output-root O. The
contiguous id of a category is its position in the json's "categories" (for COCO that is
detectron2's COCO_CATEGORIES order).
"""
import argparse
import functools
import json
import logging
import multiprocessing as mp
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_utils import parser, require, run  # noqa: E402

logger = logging.getLogger("prepare_coco_semantic_annos_from_panoptic_images")


def convert_one(panoptic_png: str, output_png: str, segments_info: Sequence[Dict],
                category_map: Dict[int, int]) -> None:
    from panopticapi.utils import rgb2id

    from maskformer_d2.data.mappers.targets import panoptic_to_semantic

    pan_ids = rgb2id(np.asarray(Image.open(panoptic_png).convert("RGB"), dtype=np.uint32))
    semantic = panoptic_to_semantic(pan_ids, segments_info, 255, np.uint8, category_map)
    Image.fromarray(semantic).save(output_png)


def convert(panoptic_json: str, panoptic_root: str, output_root: str, workers: int = 1) -> int:
    """Convert every annotation of ``panoptic_json``; returns how many PNGs were written."""
    with open(panoptic_json) as f:
        info = json.load(f)
    categories = info["categories"]
    if len(categories) > 255:
        raise ValueError(f"{panoptic_json}: {len(categories)} categories do not fit uint8 labels")
    category_map = {c["id"]: i for i, c in enumerate(categories)}
    os.makedirs(output_root, exist_ok=True)
    jobs = [(os.path.join(panoptic_root, a["file_name"]), os.path.join(output_root, a["file_name"]),
             a["segments_info"]) for a in info["annotations"]]
    work = functools.partial(convert_one, category_map=category_map)
    if workers > 1:
        with mp.Pool(workers) as pool:
            pool.starmap(work, jobs, chunksize=64)
    else:
        for job in jobs:
            work(*job)
    return len(jobs)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = parser(__doc__, "coco/")
    ap.add_argument("--panoptic-json", help="convert this dataset instead of COCO's splits")
    ap.add_argument("--panoptic-root", help="its panoptic PNG folder (with --panoptic-json)")
    ap.add_argument("--output-root", help="where to write (with --panoptic-json)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="processes (default: half the CPUs)")
    args = ap.parse_args(argv)
    custom = [args.panoptic_json, args.panoptic_root, args.output_root]
    if any(custom) and not all(custom):
        ap.error("--panoptic-json, --panoptic-root and --output-root go together")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.panoptic_json:
        jobs = [(args.panoptic_json, args.panoptic_root, args.output_root)]
    else:
        coco = os.path.join(args.root, "coco")
        jobs = [(os.path.join(coco, "annotations", f"panoptic_{s}.json"),
                 os.path.join(coco, f"panoptic_{s}"), os.path.join(coco, f"panoptic_semseg_{s}"))
                for s in ("val2017", "train2017")]
    for panoptic_json, panoptic_root, output_root in jobs:
        require([panoptic_json, panoptic_root], "download COCO's panoptic annotations "
                "(panoptic_annotations_trainval2017.zip) and unzip the PNG archives there")
        n = convert(panoptic_json, panoptic_root, output_root, args.workers)
        logger.info(f"{n} semantic PNGs written to {output_root}")
    return 0


if __name__ == "__main__":
    run(main)
