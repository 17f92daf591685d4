"""Shapes: a small synthetic dataset, in all three standard formats, to train and test on anywhere.

Each RGB image (default 128 x 128) shows textured *stuff* regions (wavy bands of "sky", "grass",
"wall") under overlapping *things* ("circle", "square", "triangle", "star": 2-6 per image, radius
10-22% of the image side, random rotation, later ones occluding earlier ones). A thing's colour is
drawn from its class's hue family, and neighbouring families overlap: colour narrows a thing down
to one or two classes, its outline decides (half of all hues are shared by two classes). Some
pixels are void: a checkered blob in some images and thing fragments too small to annotate.
Everything is drawn with seeded numpy + OpenCV, so the same parameters give the same bytes.

Generator history (the marker's ``generator_version``): 1 had hues independent of the class and
radii of 7-20%; with it the CPU quickstart recipe plateaued near mIoU 57 / mask AP 13 / PQ 50,
telling squares, triangles and stars apart barely better than chance after 10 CPU-minutes.

Contiguous class ids: things first, then stuff (detectron2's COCO convention, which its
COCOEvaluator needs: thing ids must be exactly ``0..T-1``)::

    0 circle  1 square  2 triangle  3 star  4 sky  5 grass  6 wall      (dataset id = id + 1)

The dataset is written once, under ``<root>/<size>px_<train>train_<val>val_seed<seed>/``::

    shapes.json                              marker: generation parameters and class list
    images/{train,val}/000001.png            RGB images
    sem_seg/{train,val}/000001.png           uint8 contiguous class per pixel, 255 = void
    panoptic/{train,val}/000001.png          COCO-panoptic RGB-encoded segment ids, 0 = void
    annotations/panoptic_{train,val}.json    COCO-panoptic json (all 7 categories)
    annotations/instances_{train,val}.json   COCO instance json (things only, RLE masks)

The semantic PNGs are the semantic-from-panoptic maps, so the three formats agree pixel for pixel.
Generation writes to a temporary folder renamed into place at the end (a killed run leaves no half
dataset), and is redone when the marker's parameters differ.

Registered names (generation happens on the first ``DatasetCatalog.get``, or ``prepare_shapes``):
``shapes_sem_seg_{train,val}``, ``shapes_instance_{train,val}``, ``shapes_panoptic_{train,val}``.
``shapes_panoptic_*`` carries the metadata of COCOPanopticEvaluator, SemSegEvaluator and
COCOEvaluator at once, and its dicts carry "segments_info" (contiguous ids), "sem_seg_file_name",
"pan_seg_file_name" and the instance "annotations", so one model can be trained with any of the
three mappers and evaluated by all three evaluators on ``shapes_panoptic_val``.
"""
from .register import register_shapes
from .render import render_scene
from .spec import (
    CLASSES,
    GENERATOR_VERSION,
    STUFF_CLASSES,
    THING_CLASSES,
    ShapesSpec,
    default_shapes_root,
    shapes_metadata,
    shapes_spec,
)
from .writer import prepare_shapes

__all__ = [
    "GENERATOR_VERSION",
    "THING_CLASSES",
    "STUFF_CLASSES",
    "CLASSES",
    "ShapesSpec",
    "default_shapes_root",
    "shapes_spec",
    "shapes_metadata",
    "render_scene",
    "prepare_shapes",
    "register_shapes",
]
