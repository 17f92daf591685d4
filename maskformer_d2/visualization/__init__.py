"""Drawing what the model predicts: each output task's drawing, and the demo that runs a
predictor on images and videos and draws one task or all of them side by side."""
from .demo import ALL, VisualizationDemo, configure_task, read_frames, side_by_side, task_choices
from .drawing import TASK_DRAWINGS, DrawContext, TaskDrawing, drawing_of, register_task_drawing
from .segments import Segment, describe_segments, segments_record

__all__ = [
    "ALL", "VisualizationDemo", "configure_task", "read_frames", "side_by_side", "task_choices",
    "TASK_DRAWINGS", "DrawContext", "TaskDrawing", "drawing_of", "register_task_drawing",
    "Segment", "describe_segments", "segments_record",
]
