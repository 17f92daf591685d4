"""The table of output tasks: one entry per task, read by the config, the meta-architecture, the
evaluators and the demo. A new task is one ``register_task`` call plus its function; its drawing
and evaluators are attached by name where they are used."""
import numpy as np
import pytest
import torch
from _tiny_maskformer import tiny_cfg
from detectron2.config import get_cfg
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.modeling import build_model

from maskformer_d2 import add_maskformer_config
from maskformer_d2.evaluation import (
    FastCOCOEvaluator,
    FastSemSegEvaluator,
    InMemoryPanopticEvaluator,
    PanopticEvaluatorWithClasses,
    build_evaluators,
)
from maskformer_d2.inference.postprocessing import ImagePrediction, InferenceOptions
from maskformer_d2.inference.tasks import TASKS, Task, enabled_tasks, register_task, set_enabled_tasks
from maskformer_d2.visualization import (
    TASK_DRAWINGS,
    DrawContext,
    VisualizationDemo,
    drawing_of,
    register_task_drawing,
    task_choices,
)


def test_builtin_tasks_and_their_config_flags():
    assert [(t.name, t.output_key, t.config_flag) for t in TASKS.values()][:3] == [
        ("semantic", "sem_seg", "SEMANTIC_ON"),
        ("instance", "instances", "INSTANCE_ON"),
        ("panoptic", "panoptic_seg", "PANOPTIC_ON"),
    ]
    cfg = get_cfg()
    add_maskformer_config(cfg)
    assert [t.name for t in enabled_tasks(cfg)] == ["semantic"]  # the defaults
    cfg = set_enabled_tasks(cfg, ["panoptic", "semantic"])
    assert [t.name for t in enabled_tasks(cfg)] == ["semantic", "panoptic"]


@pytest.mark.slow
def test_evaluators_follow_the_enabled_tasks_and_the_metadata(tmp_path):
    cfg = set_enabled_tasks(tiny_cfg(), ["semantic", "instance", "panoptic"])
    evaluators = build_evaluators(cfg, "shapes_panoptic_val", str(tmp_path))
    assert isinstance(evaluators, DatasetEvaluators)
    assert [type(e) for e in evaluators._evaluators] == [FastSemSegEvaluator, FastCOCOEvaluator,
                                                         InMemoryPanopticEvaluator]
    # one key selects detectron2's stock evaluators
    cfg.defrost()
    cfg.TEST.EVALUATOR = "detectron2"
    evaluators = build_evaluators(cfg, "shapes_panoptic_val", str(tmp_path))
    assert [type(e) for e in evaluators._evaluators] == [SemSegEvaluator, COCOEvaluator, PanopticEvaluatorWithClasses]
    # a semantic dataset cannot judge instances or panoptic segments
    assert type(build_evaluators(cfg, "shapes_sem_seg_val", str(tmp_path))) is SemSegEvaluator
    with pytest.raises(NotImplementedError, match="no evaluator for dataset 'shapes_sem_seg_val'"):
        build_evaluators(set_enabled_tasks(cfg, ["panoptic"]), "shapes_sem_seg_val", str(tmp_path))


def _objectness(p: ImagePrediction, options: InferenceOptions) -> torch.Tensor:
    """(height, width) probability that some query's mask covers a pixel."""
    return p.mask_pred.sigmoid().amax(dim=0)


def _draw_objectness(ctx: DrawContext, objectness: torch.Tensor) -> np.ndarray:
    gray = (objectness.clamp(0, 1) * 255).to(torch.uint8).numpy()
    return np.repeat(gray[:, :, None], 3, axis=2)


@pytest.fixture
def toy_task():
    task = register_task(Task(
        name="objectness", output_key="objectness", config_flag="OBJECTNESS_ON", postprocess=_objectness,
    ))
    register_task_drawing("objectness", _draw_objectness,
                          summarize=lambda out, _: f"{float(out.mean()):.2f} mean objectness")
    yield task
    del TASKS[task.name], TASK_DRAWINGS[task.name]


def test_a_task_without_a_drawing_says_how_to_attach_one():
    with pytest.raises(KeyError, match="output task 'nothing' has no drawing; attach one with "
                       "maskformer_d2.visualization.register_task_drawing"):
        drawing_of("nothing")


def test_a_new_task_is_one_entry_and_one_function(toy_task):
    cfg = tiny_cfg()  # built after registration: MODEL.MASK_FORMER.TEST.OBJECTNESS_ON exists (off)
    assert cfg.MODEL.MASK_FORMER.TEST.OBJECTNESS_ON is False
    assert "objectness" in task_choices()

    cfg = set_enabled_tasks(cfg, ["semantic", "objectness"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 64, 96) * 255, "height": 32, "width": 48}])
    assert set(out) == {"sem_seg", "objectness"}
    assert out["objectness"].shape == (32, 48)
    assert 0 <= float(out["objectness"].min()) and float(out["objectness"].max()) <= 1

    demo = VisualizationDemo(tiny_cfg(), task="objectness")
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    predictions, vis = demo.run_on_image(image)
    assert set(predictions) == {"objectness"}
    assert vis.shape == (40, 60, 3) and vis.dtype == np.uint8
    np.testing.assert_array_equal(vis[:, :, 0], (predictions["objectness"].clamp(0, 1) * 255).to(torch.uint8).numpy())
    assert demo.summarize(predictions).endswith("mean objectness")
