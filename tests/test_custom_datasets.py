"""A user's own dataset, registered the usual detectron2 way, trains with MaskFormer (README
"Your own dataset")."""
import numpy as np
import pytest
import torch
from _tiny_maskformer import tiny_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from maskformer_d2.data import prepare_shapes
from maskformer_d2.data.datasets.shapes import shapes_spec
from maskformer_d2.engine import Trainer


@pytest.fixture
def coco_instances(tmp_path):
    """A tiny COCO instance dataset (json + images) registered with register_coco_instances."""
    spec = shapes_spec(str(tmp_path / "cache"), num_train=8, num_val=2, image_size=64)
    prepare_shapes(spec.root, num_train=8, num_val=2, image_size=64)
    paths = spec.paths("train")
    name = "my_coco_instances_train"
    register_coco_instances(name, {}, paths["json_file"], paths["image_root"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.slow
def test_register_coco_instances_dataset_trains_an_instance_model(coco_instances, tmp_path):
    # detectron2 fills thing_dataset_id_to_contiguous_id only when the json is first read
    assert not hasattr(MetadataCatalog.get(coco_instances), "thing_dataset_id_to_contiguous_id")
    cfg = tiny_cfg(num_classes=4, overrides=[
        "DATASETS.TRAIN", (coco_instances,), "DATASETS.TEST", (),
        "INPUT.DATASET_MAPPER_NAME", "mask_former_instance", "INPUT.MIN_SIZE_TRAIN", (64,),
        "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.CROP.ENABLED", False,
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", False, "MODEL.MASK_FORMER.TEST.INSTANCE_ON", True,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 4, "SOLVER.BASE_LR", 1e-4,
        "SOLVER.CHECKPOINT_PERIOD", 1000, "TEST.EVAL_PERIOD", 0, "DATALOADER.NUM_WORKERS", 0,
        "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    trainer = Trainer(cfg)
    assert trainer.model.inference_options.thing_ids == frozenset(range(4))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 4  # iterations 0..3 done
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 4 and all(np.isfinite(v) for v, _ in losses)

    trainer.model.eval()
    with torch.no_grad():
        (out,) = trainer.model([{"image": torch.rand(3, 64, 64) * 255}])
    assert set(out) == {"instances"} and out["instances"].pred_masks.shape[-2:] == (64, 64)
