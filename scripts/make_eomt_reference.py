#!/usr/bin/env python
"""Write the EoMT parity cases of tests/test_eomt_parity.py by running the official code.

    python scripts/make_eomt_reference.py /path/to/tue-mps/eomt [--out tests/data/eomt_reference]
    python scripts/make_eomt_reference.py /path/to/tue-mps/eomt --dinov3 [--out tests/data/eomt_dinov3_reference]

The official checkout (https://github.com/tue-mps/eomt, the cases were made at commit 7bd19dd)
is imported from its own folder and run on the CPU with random weights on a small model: a
DINOv2-style timm ViT (``vit_small_patch14_reg4_dinov2`` with width 32, depth 4, 2 heads,
patch 16) at 64x64, 2 query blocks, 16 queries, 6 classes (4 things, 2 stuff). Only data is
written (no official code): the weights (official names, float16 values, so that float32 loads
them exactly), inputs, per-block logits, the training losses at a fixed annealing state and
seed, and the panoptic / instance / sliding-window semantic outputs of the official evaluation
code. Its training and evaluation modules import Lightning, torchmetrics and wandb at the top;
those imports are stood in for by empty modules, since the functions run here do not use them.

``--dinov3``: the same small model on transformers' DINOv3 ViT (``configs/dinov3``: rotary
position embeddings, ``facebook/dinov3-vits16-pretrain-lvd1689m`` narrowed the same way), whose
official code asks ``AutoModel.from_pretrained`` for the encoder: a randomly initialised
``DINOv3ViTModel`` of the small config stands in for the download (in the module layout of
transformers 4.56, which the official code renames). It adds the official loading of *delta*
weights (``delta_weights: True``): the encoder's weights as a transformers file, a checkpoint of
deltas, and per-entry checksums of the official result.
"""
import argparse
import importlib
import importlib.util
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "backbone_name": "vit_small_patch14_reg4_dinov2",
    "embed_dim": 32, "depth": 4, "num_heads": 2, "patch_size": 16, "img_size": [64, 64],
    "num_blocks": 2, "num_q": 16, "num_classes": 6, "stuff_classes": [4, 5],
    "num_points": 256, "mask_thresh": 0.0, "overlap_thresh": 0.3, "eval_top_k_instances": 50,
    "train_attn_mask_probs": [1.0, 0.5], "loss_seed": 123, "weights_seed": 1,
    "lr": 1e-4, "llrd": 0.8, "weight_decay": 0.05, "warmup_steps": [10, 20], "total_steps": 100,
    "poly_power": 0.9,
}
# the DINOv3 case: transformers' DINOv3 ViT narrowed as above (MLP ratio 4), the official DINOv3
# configs' query blocks without layer-wise decay
SMALL_DINOV3 = dict(
    SMALL, backbone_name="facebook/dinov3-vits16-pretrain-lvd1689m", llrd_l2_enabled=False,
    dinov3={"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
            "patch_size": 16, "num_register_tokens": 4, "rope_theta": 100.0, "pos_embed_rescale": 2.0,
            "layer_norm_eps": 1e-5})


# ----------------------------------------------------------------------------- importing
def _stub_modules() -> None:
    """Empty stand-ins for the official modules' logging/metrics imports."""

    class _LightningModule(nn.Module):
        def save_hyperparameters(self, *args, **kwargs):
            pass

        def log(self, *args, **kwargs):
            pass

        @property
        def device(self):
            return next(self.parameters()).device

    class _Metric(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    module("lightning", LightningModule=_LightningModule)
    module("lightning.fabric")
    module("lightning.fabric.utilities", rank_zero_info=print)
    module("torchmetrics")
    module("torchmetrics.classification", MulticlassJaccardIndex=_Metric)
    module("torchmetrics.detection", PanopticQuality=_Metric, MeanAveragePrecision=_Metric)
    module("torchmetrics.functional")
    module("torchmetrics.functional.detection")
    module("torchmetrics.functional.detection._panoptic_quality_common", _prepocess_inputs=None,
           _Color=tuple, _get_color_areas=None, _calculate_iou=None)
    module("wandb")


def _load_package(name: str, directory: Path) -> None:
    """Import ``directory`` as top-level package ``name`` (its submodules import each other as
    ``models.*`` / ``training.*``) without putting the checkout on sys.path."""
    spec = importlib.util.spec_from_file_location(
        name, directory / "__init__.py", submodule_search_locations=[str(directory)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)


def load_official(checkout: Path):
    _stub_modules()
    for name in ("models", "training"):
        _load_package(name, checkout / name)
    return types.SimpleNamespace(
        vit=importlib.import_module("models.vit"),
        eomt=importlib.import_module("models.eomt"),
        panoptic=importlib.import_module("training.mask_classification_panoptic"),
        instance=importlib.import_module("training.mask_classification_instance"),
        semantic=importlib.import_module("training.mask_classification_semantic"),
    )


# ----------------------------------------------------------------------------- the model
def small_dinov3(s) -> nn.Module:
    """What ``AutoModel.from_pretrained`` would return for the small DINOv3 (random weights), in
    transformers 4.56's layout (``layer`` at the top), the one the official code renames."""
    import transformers

    config = transformers.DINOv3ViTConfig(**s["dinov3"])
    config._attn_implementation = "sdpa"
    model = transformers.DINOv3ViTModel(config)
    if not hasattr(model, "layer"):  # transformers >= 5 keeps the layers in model.model
        model.layer = model.model.layer
        del model.model
    return model


def build_network(official, s=SMALL) -> nn.Module:
    import timm

    torch.manual_seed(s["weights_seed"])
    if "dinov3" in s:
        official.vit.AutoModel = types.SimpleNamespace(from_pretrained=lambda name: small_dinov3(s))
    encoder = official.vit.ViT(img_size=tuple(s["img_size"]), patch_size=s["patch_size"],
                               backbone_name=s["backbone_name"], ckpt_path="(random weights)")
    if "dinov3" not in s:
        # the official ViT takes a timm name only; the small variant is the same architecture
        encoder.backbone = timm.create_model(
            s["backbone_name"], pretrained=False, img_size=tuple(s["img_size"]), patch_size=s["patch_size"],
            num_classes=0, embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"])
    network = official.eomt.EoMT(encoder, num_classes=s["num_classes"], num_q=s["num_q"],
                                 num_blocks=s["num_blocks"])
    torch.manual_seed(s["weights_seed"])
    with torch.no_grad():  # random weights of a useful scale, exactly representable in float16
        for name, p in network.named_parameters():
            if p.dim() >= 2 and "token" not in name and "pos_embed" not in name and name != "q.weight":
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            elif p.dim() >= 2:
                p.normal_(0.0, 1.0)
            else:
                p.add_(torch.randn_like(p) * 0.2)
            p.copy_(p.half().float())
    return network


def lightning_module(official, kind: str, network: nn.Module, s=SMALL, **extra):
    common = dict(network=network, img_size=tuple(s["img_size"]), num_classes=s["num_classes"],
                  attn_mask_annealing_enabled=False, num_points=s["num_points"],
                  mask_thresh=s["mask_thresh"], overlap_thresh=s["overlap_thresh"], lr=s["lr"],
                  llrd=s["llrd"], weight_decay=s["weight_decay"], poly_power=s["poly_power"],
                  llrd_l2_enabled=s.get("llrd_l2_enabled", True), **extra)
    if kind == "panoptic":
        return official.panoptic.MaskClassificationPanoptic(stuff_classes=s["stuff_classes"], **common)
    if kind == "instance":
        return official.instance.MaskClassificationInstance(
            eval_top_k_instances=s["eval_top_k_instances"], **common)
    return official.semantic.MaskClassificationSemantic(**common)


# ----------------------------------------------------------------------------- inputs
def label_map(rng: np.random.Generator, height: int, width: int, num_classes: int, n: int):
    """Non-overlapping segments: ``n`` random rectangles painted in order (later ones on top)."""
    segments = np.full((height, width), -1)
    labels = rng.integers(0, num_classes, size=n)
    for i in range(n):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        h, w = rng.integers(8, height - top + 1), rng.integers(8, width - left + 1)
        segments[top:top + h, left:left + w] = i
    present = [i for i in range(n) if (segments == i).any()]
    masks = np.stack([segments == i for i in present])
    return masks, labels[present]


def dummy_target(height: int, width: int) -> dict:
    masks = torch.zeros(1, height, width, dtype=torch.bool)
    masks[0, : height // 2] = True
    return {"masks": masks, "labels": torch.tensor([0]), "is_crowd": torch.tensor([False])}


def capture(module, name: str, store: list) -> None:
    """Keep the arguments of the metric update ``name`` instead of updating a metric."""
    setattr(module, name, lambda preds, *args: store.append((preds, args[-1])))


def checksums(state) -> dict:
    """Per entry: the float64 sum and the first four values (enough to tell which base a delta
    was added to)."""
    return {k: [float(v.double().sum())] + v.flatten()[:4].double().tolist() for k, v in state.items()}


def delta_case(official, network: nn.Module, out: Path, s) -> dict:
    """The official loading of delta weights (``delta_weights: True``): the DINOv3 file
    (transformers' names, as ``from_pretrained`` reads it: the network's encoder weights), a
    checkpoint of random deltas for every entry, and checksums of what the official module holds
    after adding them."""
    import copy

    encoder = network.encoder.backbone
    base = {("embeddings." + k[len("patch_embed."):] if k.startswith("patch_embed.") else
             "layer." + k[len("blocks."):] if k.startswith("blocks.") else k): v.clone()
            for k, v in encoder.state_dict().items()}
    base["embeddings.mask_token"] = torch.zeros(1, 1, s["dinov3"]["hidden_size"])
    def as_built() -> nn.Module:  # the encoder's weights; the annealing state of a new network
        copied = copy.deepcopy(network)
        with torch.no_grad():
            copied.attn_mask_probs.fill_(1.0)
        return copied

    fresh = lightning_module(official, "panoptic", as_built(), s)
    generator = torch.Generator().manual_seed(7)
    delta = {k: (torch.randn(v.shape, generator=generator) * 0.1).half().float() if v.is_floating_point() else v
             for k, v in fresh.state_dict().items()}
    delta["network.attn_mask_probs"] = -torch.ones(s["num_blocks"])  # trained: every probability 0
    delta["network.encoder.pixel_mean"] = torch.zeros_like(delta["network.encoder.pixel_mean"])
    delta["network.encoder.pixel_std"] = torch.zeros_like(delta["network.encoder.pixel_std"])
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in base.items()}, out / "dinov3_base.pth")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in delta.items()}, out / "delta_weights.pth")
    loaded = lightning_module(official, "panoptic", as_built(), s, delta_weights=True,
                              ckpt_path=str(out / "delta_weights.pth"))
    return checksums({k: v for k, v in loaded.state_dict().items() if k.startswith("network.")})


# ----------------------------------------------------------------------------- cases
def make(checkout: Path, out: Path, s=SMALL) -> None:
    official = load_official(checkout)
    out.mkdir(parents=True, exist_ok=True)
    network = build_network(official, s)
    rng = np.random.default_rng(0)
    arrays, expected = {}, {}
    h, w = s["img_size"]

    # training: per-block logits and losses at annealing state train_attn_mask_probs
    module = lightning_module(official, "panoptic", network, s)
    images = torch.from_numpy(rng.integers(0, 256, size=(2, 3, h, w), dtype=np.uint8))
    targets = []
    for b, n in enumerate((4, 3)):
        masks, labels = label_map(rng, h, w, s["num_classes"], n)
        arrays[f"train_masks_{b}"], arrays[f"train_labels_{b}"] = masks, labels
        targets.append({"masks": torch.from_numpy(masks), "labels": torch.from_numpy(labels)})
    arrays["train_images"] = images.numpy()
    logged, outputs = {}, []
    module.log = lambda key, value, **kwargs: logged.__setitem__(key, float(value))
    hook = network.register_forward_hook(lambda m, i, o: outputs.append(o))
    module.train()
    with torch.no_grad():
        network.attn_mask_probs.copy_(torch.tensor(s["train_attn_mask_probs"]))
    torch.manual_seed(s["loss_seed"])
    total = module.training_step((images, targets), 0)
    hook.remove()
    for i, (masks, logits) in enumerate(zip(*outputs[0])):
        arrays[f"train_pred_masks_{i}"] = masks.detach().numpy()
        arrays[f"train_pred_logits_{i}"] = logits.detach().numpy()
    expected["train_losses"] = {k.replace("losses/train_", ""): v for k, v in logged.items()}
    expected["train_loss_total"] = float(total)

    # evaluation of the trained state (every probability 0): no masked attention
    with torch.no_grad():
        network.attn_mask_probs.zero_()
    module.eval()

    # panoptic: resized to fit 64x64 and padded by the official evaluation code
    image = torch.from_numpy(rng.integers(0, 256, size=(3, 70, 50), dtype=np.uint8))
    arrays["panoptic_image"] = image.numpy()
    found, outputs = [], []
    capture(module, "update_metrics_panoptic", found)
    hook = network.register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        module.eval_step(((image,), (dummy_target(70, 50),)), 1, "val")
    hook.remove()
    arrays["eval_pred_masks"] = outputs[0][0][-1].numpy()
    arrays["eval_pred_logits"] = outputs[0][1][-1].numpy()
    preds = found[-1][0][0]  # final block, first image: (H, W, 2) class, segment id (-1 void)
    arrays["panoptic_classes"] = preds[..., 0].numpy().astype(np.int16)
    arrays["panoptic_segments"] = preds[..., 1].numpy().astype(np.int16)

    # instance: the same image and network
    module = lightning_module(official, "instance", network, s)
    module.eval()
    found = []
    capture(module, "update_metrics_instance", found)
    with torch.no_grad():
        module.eval_step(((image,), (dummy_target(70, 50),)), 1, "val")
    pred = found[-1][0][0]
    order = torch.argsort(pred["scores"], descending=True)
    arrays["instance_masks"] = np.packbits(pred["masks"][order].numpy(), axis=-1)
    arrays["instance_labels"] = pred["labels"][order].numpy()
    arrays["instance_scores"] = pred["scores"][order].numpy()

    # semantic: short side resized to 64, two overlapping 64x64 windows
    module = lightning_module(official, "semantic", network, s)
    module.eval()
    image = torch.from_numpy(rng.integers(0, 256, size=(3, 40, 72), dtype=np.uint8))
    arrays["semantic_image"] = image.numpy()
    found = []
    capture(module, "update_metrics_semantic", found)
    with torch.no_grad():
        module.eval_step(((image,), (dummy_target(40, 72),)), 1, "val")
    arrays["sem_seg"] = found[-1][0][0].numpy()

    # optimiser: each parameter's LR (layer-wise decay) and the two-stage warm-up + poly schedule
    module = lightning_module(official, "panoptic", network, s, warmup_steps=list(s["warmup_steps"]))
    module.trainer = types.SimpleNamespace(estimated_stepping_batches=s["total_steps"])
    optim = module.configure_optimizers()
    groups = optim["optimizer"].param_groups
    scheduler = optim["lr_scheduler"]["scheduler"]
    expected["param_lrs"] = {g["name"]: lr for g, lr in zip(groups, scheduler.base_lrs)}
    expected["weight_decays"] = sorted({g["weight_decay"] for g in groups})
    vit, head = 0, len(groups) - 1  # the ViT's groups come first
    factors = []
    for _ in range(s["total_steps"]):
        factors.append([groups[vit]["lr"] / scheduler.base_lrs[vit], groups[head]["lr"] / scheduler.base_lrs[head]])
        optim["optimizer"].step()
        scheduler.step()
    arrays["schedule_vit_head"] = np.array(factors)

    if "dinov3" in s:
        expected["delta_checksums"] = delta_case(official, network, out, s)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in module.state_dict().items()}
    torch.save(state, out / "weights.pth")
    np.savez_compressed(out / "cases.npz", **arrays)
    import timm
    import transformers
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    config = dict(s, official_commit=commit or "7bd19dd (from an archive)", torch=torch.__version__,
                  timm=timm.__version__, transformers=transformers.__version__)
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    print(f"wrote {out}: {sizes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/tue-mps/eomt")
    parser.add_argument("--dinov3", action="store_true", help="the DINOv3 case (see above)")
    parser.add_argument("--out", type=Path, help="default: tests/data/eomt_reference "
                        "(--dinov3: tests/data/eomt_dinov3_reference)")
    args = parser.parse_args()
    if not (args.checkout / "models" / "eomt.py").is_file():
        sys.exit(f"{args.checkout}: not a checkout of tue-mps/eomt (no models/eomt.py)")
    name = "eomt_dinov3_reference" if args.dinov3 else "eomt_reference"
    make(args.checkout, args.out or REPO / "tests" / "data" / name, SMALL_DINOV3 if args.dinov3 else SMALL)


if __name__ == "__main__":
    main()
