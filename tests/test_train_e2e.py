"""End to end: train_net.py on the built-in shapes data, and DDP on CPU (gloo) via d2's ``launch``.

The tests marked ``slow`` train for a minute or more on 2 CPU cores; CI runs them.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "shapes" / "maskformer_R18_shapes.yaml"
TINY = [  # a small model and a small dataset: enough to see learning in a few dozen iterations
    "DATASETS.SHAPES.NUM_TRAIN", "48", "DATASETS.SHAPES.NUM_VAL", "6", "SOLVER.IMS_PER_BATCH", "4",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "64", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.BASE_LR", "0.001", "SOLVER.CHECKPOINT_PERIOD", "15",
]


def run_train_net(tmp_path: Path, *opts: str, resume: bool = False) -> subprocess.CompletedProcess:
    cmd, env = _train_cmd(tmp_path, *opts, resume=resume)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def read_metrics(out: Path) -> List[Dict]:
    with open(out / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_cmd(tmp_path: Path, *opts: str, resume: bool = False):
    env = dict(os.environ, MASKFORMER_D2_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(CONFIG)]
    cmd += ["--resume"] if resume else []
    return cmd + [*TINY, "OUTPUT_DIR", str(tmp_path / "out"), *opts], env


# train_net.py's command line, with two ways to stop it at a known point, however slow the machine:
# SIGTERM_AT=<i> sends the process SIGTERM as iteration i begins (the real signal path);
# KILL_DURING_SAVE=<file.pth> SIGKILLs it half-way through writing that checkpoint.
KILL_AT = 20
_WRAPPER = """
import os, signal, sys
import torch
from detectron2.engine import HookBase
from maskformer_d2.engine import Trainer, cli

SIGTERM_AT = int(os.environ.get("SIGTERM_AT", "-1"))
KILL_DURING = os.environ.get("KILL_DURING_SAVE", "")
_save = torch.save


def save(obj, f, *args, **kwargs):
    name = os.path.basename(getattr(f, "name", ""))  # write_atomically's .NAME.<random>.tmp-<pid>
    if KILL_DURING and name.startswith("." + KILL_DURING + ".") and ".tmp-" in name:
        f.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)


torch.save = save


class SigtermAt(HookBase):
    def before_step(self):
        if self.trainer.iter == SIGTERM_AT:
            os.kill(os.getpid(), signal.SIGTERM)


_hooks = Trainer.build_hooks
Trainer.build_hooks = lambda self: _hooks(self) + [SigtermAt()]
sys.exit(cli(sys.argv[1:]))
"""


def run_wrapped(tmp_path: Path, *opts: str, resume: bool = False, **stop: str) -> subprocess.CompletedProcess:
    """train_net.py through the wrapper above; ``stop``: SIGTERM_AT and/or KILL_DURING_SAVE."""
    cmd, env = _train_cmd(tmp_path, *opts, resume=resume)
    wrapper = tmp_path / "train_net_stoppable.py"
    wrapper.write_text(_WRAPPER)
    env.update(stop)
    return subprocess.run([cmd[0], str(wrapper), *cmd[2:]], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_evaluate_and_resume_after_a_kill(tmp_path):
    """SIGTERM mid-run saves a checkpoint; --resume continues from the interrupted iteration
    and finishes; the loss falls; mIoU, PQ and mask AP come back finite."""
    out = tmp_path / "out"
    killed = run_wrapped(tmp_path, "SOLVER.MAX_ITER", "45", SIGTERM_AT=str(KILL_AT))
    assert killed.returncode == 130, killed.stderr[-3000:]
    assert "--resume" in killed.stderr.splitlines()[-1]  # one line telling how to continue
    assert (out / "model_0000014.pth").exists()  # the periodic checkpoint before the kill
    assert (out / "last_checkpoint").read_text().strip() == "model_interrupted.pth"
    saved = torch.load(out / "model_interrupted.pth", map_location="cpu", weights_only=True)["iteration"]
    assert saved == KILL_AT - 1  # iterations 0..19 are complete; 20 was interrupted

    resumed = run_train_net(tmp_path, "SOLVER.MAX_ITER", "45", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # a successful run prints no traceback (the panoptic evaluator's pool workers get SIGTERM at exit)
    assert "Traceback" not in resumed.stderr and "KeyboardInterrupt" not in resumed.stderr
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {saved + 1}" in log  # no iteration lost or repeated
    assert (out / "model_final.pth").exists()
    rows = read_metrics(out)
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert len(losses) >= 2 and losses[-1] < 0.8 * losses[0], losses
    evals = [r for r in rows if "sem_seg/mIoU" in r]
    assert evals, "no evaluation results in metrics.json"
    last = evals[-1]
    for key in ("sem_seg/mIoU", "panoptic_seg/PQ", "segm/AP"):
        assert math.isfinite(last[key]), (key, last)
    assert last["sem_seg/mIoU"] > 10.0  # a learned model, not chance (7 classes)
    # training as pictures, next to metrics.json: curves, the last evaluation per class, TensorBoard
    for figure in ("training_curves.png", "per_class.png"):
        assert (out / figure).stat().st_size > 10_000, figure
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard event file"


@pytest.mark.slow
def test_periodic_evaluation_changes_neither_training_nor_the_final_numbers(tmp_path):
    """Evaluating every 20 iterations trains the very model a run without evaluation trains (the
    evaluation loader's seed draw used to shift every later random draw), and the final
    evaluation judges the final weights (folded BatchNorm weights cached at the first evaluation
    used to survive fused-AdamW steps, which bump no version counter)."""
    runs = {}
    for period in ("0", "20"):
        out = tmp_path / f"eval_{period}"
        done = run_train_net(tmp_path, "SOLVER.MAX_ITER", "40", "TEST.EVAL_PERIOD", period, "OUTPUT_DIR", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        runs[period] = read_metrics(out)
    losses = {p: [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r] for p, rows in runs.items()}
    assert losses["0"] == losses["20"] and len(losses["0"]) >= 2
    evals = {p: [r for r in rows if "sem_seg/mIoU" in r] for p, rows in runs.items()}
    assert len(evals["0"]) == 1 and len(evals["20"]) == 2  # iteration 20 and the final one
    for key in ("sem_seg/mIoU", "segm/AP", "panoptic_seg/PQ"):
        assert evals["20"][-1][key] == evals["0"][-1][key], key


@pytest.mark.slow
def test_quickstart_recipe_learns_all_three_tasks(tmp_path, monkeypatch):
    """The shipped quickstart (scripts/quickstart.py, the shapes recipe), cut to 400 of its 900
    iterations (~4 min here): the model must clearly learn things and stuff for all three
    tasks. Measured on this 2-core VM: mIoU 73.8, mask AP 25.8, PQ 62.2 (the full recipe: 77.2,
    34.5, 67.8); the bars leave room for other CPUs' rounding."""
    out = tmp_path / "quickstart"
    env = dict(os.environ, MASKFORMER_D2_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "quickstart.py"), "--output-dir", str(out),
                          "--num-vis", "1", "SOLVER.MAX_ITER", "400"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "quickstart_metrics.json").read_text())
    m = record["metrics"]
    assert m["mIoU"] > 65 and m["mask AP"] > 15 and m["PQ"] > 55, m
    assert m["PQ_st"] > 85 and m["PQ_th"] > 25, m  # stuff and things, not stuff alone
    assert "| mIoU | mask AP | PQ | PQ_th | PQ_st |" in run.stdout  # the printed table
    (vis,) = record["rendered"]
    assert os.path.getsize(vis) > 0
    for figure in ("training_curves.png", "per_class.png"):
        assert (out / figure).stat().st_size > 10_000, figure
    _check_fast_evaluation(out, tmp_path, monkeypatch)


def _check_fast_evaluation(out: Path, tmp_path: Path, monkeypatch) -> None:
    """On the trained model and the shapes val split: detectron2's evaluators and ours give the
    same numbers (1e-4) on the same predictions; batches of 8 (the recipe's TEST.IMS_PER_BATCH)
    and single images the same up to a pixel or two (0.01 points);
    bf16 inference moves mIoU, mask AP and PQ by 0.3 points at most. bf16 is forced here (the
    CPU may lack bf16 units; autocast then emulates the same rounding, slowly)."""
    from maskformer_d2.checkpoint import MaskFormerCheckpointer
    from maskformer_d2.config import load_config
    from maskformer_d2.data import register_shapes
    from maskformer_d2.engine import Trainer
    from maskformer_d2.evaluation.synthetic import metric_differences

    monkeypatch.setenv("MASKFORMER_D2_CACHE", str(tmp_path / "cache"))  # the data trained on

    def evaluate(model, *opts: str) -> Dict:
        cfg = load_config(str(out / "config.yaml"), ["OUTPUT_DIR", str(tmp_path / "eval"), *opts])
        register_shapes(cfg)
        return Trainer.test(cfg, model)

    cfg = load_config(str(out / "config.yaml"))
    assert cfg.TEST.IMS_PER_BATCH == 8 and cfg.TEST.EVALUATOR == "fast"
    model = Trainer.build_model(cfg)
    MaskFormerCheckpointer(model).load(str(out / "model_final.pth"))
    fast = evaluate(model)
    stock = evaluate(model, "TEST.EVALUATOR", "detectron2")
    assert max(metric_differences(stock, fast).values()) <= 1e-4, metric_differences(stock, fast)
    # batches of 8 against one image at a time: the same up to the float rounding of batched
    # convolutions (about 2e-6 in the logits), which can flip the argmax of a pixel or two
    single = evaluate(model, "TEST.IMS_PER_BATCH", "1")
    assert max(metric_differences(single, fast).values()) <= 0.01, metric_differences(single, fast)
    model.precision = "bf16"
    bf16 = evaluate(model)
    for task, key in (("sem_seg", "mIoU"), ("segm", "AP"), ("panoptic_seg", "PQ")):
        assert abs(bf16[task][key] - fast[task][key]) <= 0.3, (task, bf16[task][key], fast[task][key])


def test_bad_config_key_is_one_line(tmp_path):
    proc = run_train_net(tmp_path, "MODEL.MASK_FORMER.NO_SUCH_KEY", "1")
    assert proc.returncode != 0
    assert "NO_SUCH_KEY" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def _random_weights(tmp_path: Path) -> str:
    """A checkpoint of the model train_net.py builds from CONFIG + TINY."""
    from detectron2.modeling import build_model

    from maskformer_d2.config import load_config

    path = tmp_path / "random.pth"
    torch.save({"model": build_model(load_config(str(CONFIG), [*TINY, "MODEL.DEVICE", "cpu"])).state_dict()}, path)
    return str(path)


def test_empty_annotation_file_is_one_line(tmp_path):
    """An empty annotation JSON of a registered dataset: one line naming dataset and file, exit 1."""
    base = tmp_path / "datasets" / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "ade20k_instance_val.json").write_text("")
    cmd, env = _train_cmd(tmp_path, "DATASETS.TEST", "('ade20k_instance_val',)", "MODEL.WEIGHTS",
                          _random_weights(tmp_path))
    env["DETECTRON2_DATASETS"] = str(tmp_path / "datasets")
    proc = subprocess.run([*cmd[:2], "--eval-only", *cmd[2:]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net: error: dataset ade20k_instance_val: cannot read")
    assert str(base / "ade20k_instance_val.json") in last and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ interrupted saves
FAST = ["DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", "MODEL.MASK_FORMER.DEC_LAYERS", "2"]


def _iteration(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["iteration"]


def _assert_resumes_at(tmp_path: Path, iteration: int, max_iter: str) -> None:
    out = tmp_path / "out"
    (out / "log.txt").unlink()
    resumed = run_train_net(tmp_path, *FAST, "SOLVER.MAX_ITER", max_iter, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {iteration}" in (out / "log.txt").read_text()
    assert not [f for f in os.listdir(out) if ".tmp-" in f]  # the killed write's leftover is gone


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["periodic", "final", "interrupted"])
def test_a_kill_during_a_save_loses_no_complete_checkpoint(tmp_path, kind):
    """SIGKILL half-way through writing each kind of checkpoint; --resume continues from the newest
    complete one (the file ``last_checkpoint`` names is never overwritten in place)."""
    out = tmp_path / "out"
    if kind == "periodic":  # checkpoints at iterations 4 and 9: killed while writing the second
        killed = run_wrapped(tmp_path, *FAST, "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "5",
                             KILL_DURING_SAVE="model_0000009.pth")
        expected = 5
    elif kind == "final":  # resuming with a longer schedule re-saves model_final.pth, which is killed
        first = run_train_net(tmp_path, *FAST, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "1000")
        assert first.returncode == 0, first.stderr[-3000:]
        killed = run_wrapped(tmp_path, *FAST, "SOLVER.MAX_ITER", "9", "SOLVER.CHECKPOINT_PERIOD", "1000",
                             resume=True, KILL_DURING_SAVE="model_final.pth")
        expected = 6
    else:  # a second preemption: SIGTERM saves model_interrupted.pth again, SIGKILL hits the write
        first = run_wrapped(tmp_path, *FAST, "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "1000",
                            SIGTERM_AT="4")
        assert first.returncode == 130, first.stderr[-3000:]
        killed = run_wrapped(tmp_path, *FAST, "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "1000",
                             resume=True, SIGTERM_AT="7", KILL_DURING_SAVE="model_interrupted.pth")
        expected = 4
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [f for f in os.listdir(out) if ".tmp-" in f]  # the kill did hit a write
    tagged = out / (out / "last_checkpoint").read_text().strip()
    assert _iteration(tagged) == expected - 1  # complete and readable
    _assert_resumes_at(tmp_path, expected, "12" if kind != "interrupted" else "10")


def test_interrupt_before_any_checkpoint_says_so(tmp_path):
    proc = run_wrapped(tmp_path, *FAST, "SOLVER.MAX_ITER", "5", SIGTERM_AT="0")
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "train_net: interrupted before any checkpoint was written; start again (no --resume needed)")


def test_eval_only_without_weights_is_an_error(tmp_path):
    proc = subprocess.run([*_train_cmd(tmp_path)[0][:2], "--eval-only", *_train_cmd(tmp_path)[0][2:]],
                          env=_train_cmd(tmp_path)[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net: error: --eval-only needs weights: set MODEL.WEIGHTS")


# ------------------------------------------------------------------------------------ DDP on CPU
def _batch(n: int) -> List[Dict]:
    from detectron2.structures import Instances

    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        inst = Instances((64, 64))
        inst.gt_classes = torch.randint(0, 7, (3,), generator=g)
        inst.gt_masks = torch.rand(3, 64, 64, generator=g) > 0.6
        batch.append({"image": torch.rand(3, 64, 64, generator=g) * 255, "instances": inst})
    return batch


def _build(opts: List[str]):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import maskformer_d2

    cfg = get_cfg()
    maskformer_d2.add_maskformer_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(TINY + opts + ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "GN"])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _one_step(rank_batch: List[Dict], opts: List[str]) -> Dict[str, float]:
    """One SGD step; returns the losses and a checksum of the updated weights."""
    import detectron2.utils.comm as comm
    from torch.nn.parallel import DistributedDataParallel

    cfg, model = _build(opts)
    model.train()
    net = DistributedDataParallel(model) if comm.get_world_size() > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = net(rank_batch)
    sum(losses.values()).backward()
    opt.step()
    values = {k: v.detach() for k, v in losses.items()}
    if comm.get_world_size() > 1:
        values = {k: v / comm.get_world_size() for k, v in values.items()}
        for v in values.values():
            torch.distributed.all_reduce(v)
    result = {k: float(v) for k, v in values.items()}
    result["weights"] = float(sum(p.detach().double().sum() for p in model.parameters()))
    return result


def _ddp_worker(out_file: str, opts: List[str]):
    import detectron2.utils.comm as comm

    batch = _batch(4)
    rank = comm.get_rank()
    result = _one_step(batch[rank * 2 : rank * 2 + 2], opts)
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(result, f)


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    """2 processes × 2 images under DDP (gloo) = 1 process × 4 images: same loss, same update."""
    from detectron2.engine import launch

    opts = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8"]
    out = tmp_path / "ddp.json"
    launch(_ddp_worker, 2, dist_url="auto", args=(str(out), opts))
    ddp = json.loads(out.read_text())
    single = _one_step(_batch(4), opts)
    assert set(ddp) == set(single)
    for k in ("loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-5), k
    for k in ("loss_ce", "loss_ce_0"):  # per-process weighted means of equal-size halves
        assert ddp[k] == pytest.approx(single[k], rel=5e-3), k
    assert ddp["weights"] == pytest.approx(single["weights"], rel=1e-6)


@pytest.mark.slow
def test_cpu_processes_share_the_cores(tmp_path):
    """--num-gpus 2 without GPUs: two gloo processes, each with its share of the cores, said once."""
    cmd, env = _train_cmd(tmp_path, *FAST, "SOLVER.MAX_ITER", "4", "MODEL.RESNETS.NORM", "GN")
    proc = subprocess.run([*cmd[:2], "--num-gpus", "2", *cmd[2:]], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = max(1, (os.cpu_count() or 1) // 2)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert log.count(f"2 CPU processes on this machine: {threads} threads each") == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_listed_but_missing_image_is_one_line(tmp_path):
    """An image the dataset lists but the disk lacks stops training with one line naming it."""
    from maskformer_d2.data.datasets.shapes import prepare_shapes

    cache = tmp_path / "cache" / "shapes"
    folder = prepare_shapes(str(cache), num_train=48, num_val=6, image_size=128)
    for image in sorted((Path(folder) / "images" / "train").iterdir()):
        image.unlink()  # every image gone: the first batch meets one
    proc = run_train_net(tmp_path, *FAST, "SOLVER.MAX_ITER", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net: error: ")
    assert "/images/train/0000" in last and ": no such file; re-create" in last
    assert "Traceback" not in proc.stderr
