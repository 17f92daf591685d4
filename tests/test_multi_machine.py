"""Training beyond one machine (docs/training_at_scale.md): two ``train_net.py`` processes started
as two "machines" (``--num-machines 2 --machine-rank 0/1 --num-gpus 1 --dist-url tcp://...``)
join detectron2's ``launch`` into one job of world size 2 (gloo on CPU) and train one model.

Each machine's ``launch`` spawns one worker; the worker computes half of every batch, DDP averages
the gradients, so both ranks hold the same weights after every step. Rank 0 alone writes
checkpoints and metrics; evaluation runs on both ranks (each on its share of the images) and is
gathered on rank 0. A hook added by the wrapper below saves every rank's weights so that rank 1's
can be compared with what rank 0 wrote; another SIGTERMs the whole job, as a scheduler preempts
one, to check that it resumes where it stopped.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "shapes" / "maskformer_R18_shapes.yaml"
MAX_ITER = 4
TIMEOUT_S = 300  # the whole job; a rank that dies leaves the other waiting in a collective
GRACE_S = 60  # how long the other machine may take to stop after one has exited non-zero

# a tiny semantic model on 64-px shapes images: 4 images per step, 2 on each rank
TINY = [
    "DATASETS.SHAPES.NUM_TRAIN", "8", "DATASETS.SHAPES.NUM_VAL", "2", "DATASETS.SHAPES.IMAGE_SIZE", "64",
    "DATASETS.TRAIN", "('shapes_sem_seg_train',)", "DATASETS.TEST", "('shapes_sem_seg_val',)",
    "INPUT.DATASET_MAPPER_NAME", "mask_former_semantic",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False", "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    # GroupNorm: no running statistics, which DDP leaves per process (detectron2 wraps the model
    # with broadcast_buffers=False), so every tensor of the two ranks must agree
    "MODEL.RESNETS.NORM", "GN",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.BASE_LR", "0.001",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
]

# train_net.py (which is `sys.exit(maskformer_d2.engine.cli())`) plus a hook that saves each rank's
# weights before and after training. launch() spawns the worker, which imports this file again as
# __mp_main__: the patch at the top applies there too, the guarded part only in the first process.
_WRAPPER = """
import os, signal, sys
import torch
from torch.nn.parallel import DistributedDataParallel
import detectron2.utils.comm as comm
from detectron2.engine import HookBase
from maskformer_d2.engine import Trainer, cli


class SaveWeightsOfEveryRank(HookBase):
    def _save(self, when):
        ddp = isinstance(self.trainer.model, DistributedDataParallel)
        model = self.trainer.model.module if ddp else self.trainer.model
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        record = {"rank": comm.get_rank(), "world_size": comm.get_world_size(), "ddp": ddp,
                  "iter": self.trainer.iter, "state": state}
        torch.save(record, os.path.join(os.environ["WEIGHTS_DIR"], f"{when}_rank{comm.get_rank()}.pth"))

    def before_train(self):
        self._save("initial")

    def after_train(self):
        self._save("final")


# on rank 0, as iteration $PREEMPT_AT begins, SIGTERM every process of the job (the process
# groups listed in $PREEMPT_GROUPS), as a scheduler does when it preempts a job
class PreemptAt(HookBase):
    def before_step(self):
        if comm.is_main_process() and self.trainer.iter == int(os.environ.get("PREEMPT_AT", "-1")):
            with open(os.environ["PREEMPT_GROUPS"]) as f:
                groups = [int(g) for g in f.read().split()]
            for group in sorted(groups, key=lambda g: g == os.getpgid(0)):  # its own last: it stops at once
                os.killpg(group, signal.SIGTERM)


_build_hooks = Trainer.build_hooks
Trainer.build_hooks = lambda self: _build_hooks(self) + [SaveWeightsOfEveryRank(), PreemptAt()]

if __name__ == "__main__":
    sys.exit(cli())  # what train_net.py runs
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen) -> None:
    """Kill a machine: its train_net.py and the worker its launch() spawned (one process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _run_two_machines(tmp_path: Path, out: Path, weights: Path, *opts: str, resume: bool = False,
                      preempt_at: int = -1) -> List[Dict]:
    """Start machine 0 and machine 1 and wait for both; kill both when time runs out, or when one
    has failed and the other has not stopped within GRACE_S. Returns [{"returncode", "stderr"}]
    per machine."""
    wrapper = tmp_path / "train_net_saving_weights.py"
    wrapper.write_text(_WRAPPER)
    groups = tmp_path / "process_groups.txt"
    dist_url = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, WEIGHTS_DIR=str(weights), OMP_NUM_THREADS="1",  # one core per "machine"
               PREEMPT_AT=str(preempt_at), PREEMPT_GROUPS=str(groups))
    procs, logs = [], []
    for rank in (0, 1):
        log = open(tmp_path / f"machine{rank}.stderr", "w+")
        cmd = [sys.executable, str(wrapper), "--config-file", str(CONFIG), *(["--resume"] if resume else []),
               "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank), "--dist-url", dist_url,
               *TINY, "DATASETS.SHAPES.ROOT", str(tmp_path / "shapes"), "OUTPUT_DIR", str(out), *opts]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log,
                                      start_new_session=True))  # its own process group, as on its own machine
        logs.append(log)
    groups.write_text(" ".join(str(p.pid) for p in procs))
    deadline, failed_at = time.monotonic() + TIMEOUT_S, None
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.monotonic()  # the other may wait for it in a collective until gloo's timeout
            if failed_at is not None and time.monotonic() > failed_at + GRACE_S:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            _kill(p)
    results = []
    for p, log in zip(procs, logs):
        log.seek(0)
        results.append({"returncode": p.returncode, "stderr": log.read()})
        log.close()
    return results


def _saved(weights: Path) -> Dict:
    """What the hook saved: {(when, rank): {"rank", "world_size", "ddp", "iter", "state"}}."""
    return {(when, rank): torch.load(weights / f"{when}_rank{rank}.pth", weights_only=True)
            for when in ("initial", "final") for rank in (0, 1)}


def _differing(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> List[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _prepare(tmp_path: Path):
    from maskformer_d2.data.datasets.shapes import prepare_shapes

    # both machines read the same files, as from a shared file system; generated once, here
    prepare_shapes(str(tmp_path / "shapes"), num_train=8, num_val=2, image_size=64)
    out, weights = tmp_path / "out", tmp_path / "weights"
    weights.mkdir()
    return out, weights


def _assert_exit(machines: List[Dict], code: int) -> None:
    for rank, m in enumerate(machines):
        assert m["returncode"] == code, f"machine {rank} (exit {m['returncode']}):\n{m['stderr'][-3000:]}"


@pytest.mark.slow
def test_two_machines_train_one_model(tmp_path):
    """Both machines finish; rank 1 ends with exactly the weights rank 0 saved in model_final.pth;
    training changed them; only rank 0 wrote checkpoints and metrics; both ranks evaluated a share
    of the validation set, and rank 0 reports the gathered mIoU."""
    out, weights = _prepare(tmp_path)
    _assert_exit(_run_two_machines(tmp_path, out, weights), 0)

    saved = _saved(weights)
    for (_when, rank), record in saved.items():
        assert (record["rank"], record["world_size"], record["ddp"]) == (rank, 2, True)
    assert saved["final", 0]["iter"] == saved["final", 1]["iter"] == MAX_ITER  # iterations 0..MAX_ITER-1 done
    initial, final0, final1 = (saved[k]["state"] for k in (("initial", 0), ("final", 0), ("final", 1)))
    # one job: DDP gave both ranks rank 0's initial weights, then the same averaged gradients
    assert not _differing(initial, saved["initial", 1]["state"])
    differ = _differing(final0, final1)
    assert not differ, f"rank 1's final weights differ from rank 0's: {differ[:5]}"
    assert len(_differing(final0, initial)) > len(initial) // 2, "training left most weights unchanged"

    # rank 0 wrote the job's checkpoint (rank 1 writes none), holding the weights both ranks have
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == MAX_ITER - 1
    assert not _differing(checkpoint["model"], final1)

    # evaluation: one of the two validation images on each rank, the mIoU gathered on rank 0
    for log in ("log.txt", "log.txt.rank1"):
        assert "Start inference on 1 batches" in (out / log).read_text(), log
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if "sem_seg/mIoU" in r]
    assert evals and math.isfinite(evals[-1]["sem_seg/mIoU"]), rows[-1:]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)


PREEMPT_AT = 2


@pytest.mark.slow
def test_a_preempted_two_machine_job_resumes_where_it_stopped(tmp_path):
    """SIGTERM to every process of the job (a scheduler's preemption) as iteration PREEMPT_AT
    begins: rank 0 saves model_interrupted.pth, both machines exit 130 saying how to continue;
    ``--resume`` on both machines continues at PREEMPT_AT from the shared OUTPUT_DIR, and the
    job ends as one model again."""
    out, weights = _prepare(tmp_path)
    no_eval = ["DATASETS.TEST", "()"]
    stopped = _run_two_machines(tmp_path, out, weights, *no_eval, preempt_at=PREEMPT_AT)
    _assert_exit(stopped, 130)
    assert (out / "last_checkpoint").read_text() == "model_interrupted.pth"
    interrupted = torch.load(out / "model_interrupted.pth", map_location="cpu", weights_only=True)
    assert interrupted["iteration"] == PREEMPT_AT - 1  # iterations 0..PREEMPT_AT-1 complete
    for m in stopped:
        assert m["stderr"].strip().splitlines()[-1] == (
            f"train_net: interrupted; the last checkpoint is {out / 'model_interrupted.pth'}, continue with --resume")

    _assert_exit(_run_two_machines(tmp_path, out, weights, *no_eval, resume=True), 0)
    for log in ("log.txt", "log.txt.rank1"):
        starts = [line for line in (out / log).read_text().splitlines() if "Starting training from iteration" in line]
        assert starts[-1].endswith(f"Starting training from iteration {PREEMPT_AT}"), (log, starts)
    saved = _saved(weights)
    assert saved["final", 0]["iter"] == saved["final", 1]["iter"] == MAX_ITER
    assert not _differing(saved["initial", 0]["state"], interrupted["model"])  # resumed from the checkpoint
    assert not _differing(saved["final", 0]["state"], saved["final", 1]["state"])


def test_reference_world_size_scales_an_official_recipe():
    """docs/training_at_scale.md: the official configs leave SOLVER.REFERENCE_WORLD_SIZE at 0 (the
    recipe stays as written on any number of GPUs); set to the world size a recipe was made for,
    detectron2's trainer keeps the batch per GPU and scales the rest linearly."""
    from maskformer_d2.config import load_config
    from maskformer_d2.engine import Trainer

    ade = load_config(str(REPO / "configs" / "ade20k-150" / "maskformer_R50_bs16_160k.yaml"))
    assert ade.SOLVER.REFERENCE_WORLD_SIZE == 0
    assert Trainer.auto_scale_workers(ade, 32) is ade

    def solver(cfg):
        s = cfg.SOLVER
        return s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, tuple(s.STEPS), s.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD

    ade.merge_from_list(["SOLVER.REFERENCE_WORLD_SIZE", 8])
    assert solver(Trainer.auto_scale_workers(ade, 16)) == (32, pytest.approx(2e-4), 80000, (15000,), 2500, 2500)
    assert solver(Trainer.auto_scale_workers(ade, 4)) == (8, pytest.approx(5e-5), 320000, (60000,), 10000, 10000)
    coco = load_config(str(REPO / "configs" / "coco" / "panoptic-segmentation" / "maskformer2_R50_bs16_50ep.yaml"),
                       ["SOLVER.REFERENCE_WORLD_SIZE", "8"])
    assert solver(Trainer.auto_scale_workers(coco, 16)) == (
        32, pytest.approx(2e-4), 184375, (163889, 177546), 2500, 2500)
