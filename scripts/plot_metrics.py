#!/usr/bin/env python
"""Redraw the figures of a training run from its output folder.

    python scripts/plot_metrics.py OUTPUT_DIR [OUTPUT_DIR ...]

Reads OUTPUT_DIR/metrics.json (detectron2's JSONWriter) and writes OUTPUT_DIR/training_curves.png
(loss terms, learning rate, each evaluation's mIoU / AP / PQ over iterations) and, when the run
was evaluated, OUTPUT_DIR/per_class.png (IoU, AP and PQ of every class at the last evaluation).
train_net.py and scripts/quickstart.py draw the same figures as they train; this redraws them,
e.g. for a run that is still going or one made before they were drawn. Exit status 1 with one
line per folder that has no readable metrics.json.
"""
import argparse
import sys

from maskformer_d2.engine.figures import draw_output_folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR")
    args = ap.parse_args(argv)
    status = 0
    for folder in args.output_dirs:
        try:
            for path in draw_output_folder(folder):
                print(path)
        except (OSError, ValueError) as e:
            print(f"plot_metrics: error: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
