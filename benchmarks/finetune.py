"""Does fine-tuning on a few corrected slices help, and how fast is a training step?

Usefulness (default): a model that has never seen the test volume segments it; three slices
are "corrected" (their reference labels stand in for the user's painting); the model is
fine-tuned on them with ``FineTuner``; Dice on all the *other* slices is reported before and
after, with the fine-tuning wall time.
- ``--base CKPT`` starts from a checkpoint; otherwise ``--train-image/--train-mask`` trains a
  base model first (the "small" configuration, slices along all three axes) and
  ``--save-base`` keeps it (float16) for the CPU run.

Throughput (``--throughput``): one training step (forward, backward, AdamW; BCE + Dice from
logits) of the released configuration at 256², batch 32, fp32 and bf16 — ours, and with
``--authors-repo`` the authors' model code in the same run.

    python benchmarks/finetune.py --device cuda --train-image colin.nii.gz \\
        --train-mask colin_brain.nii.gz --image robex.nii.gz --mask robex_mask.nii.gz \\
        --save-base base.safetensors [--throughput --authors-repo DIR]
    python benchmarks/finetune.py --device cpu --base base.safetensors \\
        --image robex.nii.gz --mask robex_mask.nii.gz
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_vmunet.metrics import dice

sys.path.insert(0, str(Path(__file__).parent))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_base(args, device):
    from napari_vmunet.engine.events import TrainingDone
    from napari_vmunet.engine.training.data import SliceSet, split_slices, volume_slices
    from napari_vmunet.engine.training.settings import TrainingSettings
    from napari_vmunet.engine.training.trainer import Trainer
    from napari_vmunet.io import read_image
    from napari_vmunet.model import PRESETS, VMUNet
    from napari_vmunet.model.info import ModelInfo
    from napari_vmunet.recipes import RECIPES

    recipe = RECIPES["mri"]
    image, mask = read_image(args.train_image), read_image(args.train_mask)
    torch.manual_seed(0)
    model = VMUNet(PRESETS["small"]).to(device)
    data = SliceSet.concat([volume_slices(image.data, (mask.data > 0).astype(np.int64),
                                          (0, 1, 2), recipe, 32, device, args.size)])
    train_idx, val_idx = split_slices(range(len(data)), 0, 0.1)
    settings = TrainingSettings(steps=args.base_steps, learning_rate=1e-3, batch_size=16,
                                validate_every=100, patience=100)
    trainer = Trainer(model, data.subset(train_idx), data.subset(val_idx), settings, device,
                      value_range=recipe.value_range)
    start = time.perf_counter()
    for event in trainer.run():
        if isinstance(event, TrainingDone):
            print(f"base model: {event.steps_run} steps in {time.perf_counter() - start:.0f} s "
                  f"on {Path(args.train_image).name}, validation Dice {event.best_dice:.4f}")
    model.info = ModelInfo(recipe)
    if args.save_base:
        from napari_vmunet.checkpoint import save_checkpoint

        save_checkpoint(model, args.save_base, recipe=recipe, class_names=["brain"],
                        provenance={"data": [Path(args.train_image).name],
                                    "steps": args.base_steps}, overwrite=True,
                        dtype=torch.float16)
    return model


def usefulness(args, device):
    from napari_vmunet.checkpoint import load_checkpoint
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.engine.events import TrainingDone
    from napari_vmunet.engine.training.finetuner import FineTuner
    from napari_vmunet.engine.training.settings import TrainingSettings
    from napari_vmunet.io import read_image

    base = load_checkpoint(args.base).to(device) if args.base else train_base(args, device)
    image, mask = read_image(args.image), read_image(args.mask)
    reference = mask.data > 0
    axis = image.geometry.axial_axis()
    along = np.moveaxis(reference, axis, 0)
    with_brain = [i for i in range(along.shape[0]) if along[i].any()]
    corrected = [with_brain[int(len(with_brain) * q)] for q in (0.3, 0.5, 0.7)]
    others = [i for i in range(along.shape[0]) if i not in corrected]

    def dice_on_others(model):
        labels = Segmenter(model, device=device).segment(image.data, axis=axis).labels > 0
        return dice(np.take(labels, others, axis), np.take(reference, others, axis))

    before = dice_on_others(base)
    model = copy.deepcopy(base)
    settings = TrainingSettings(steps=args.steps, learning_rate=args.lr, batch_size=8,
                                validate_every=max(1, args.steps // 10), patience=100)
    tuner = FineTuner(model, image.data, reference.astype(np.int64), corrected, axis,
                      settings=settings, device=device)
    _sync(device)
    start = time.perf_counter()
    for event in tuner.run():
        if isinstance(event, TrainingDone):
            done = event
    _sync(device)
    seconds = time.perf_counter() - start
    after = dice_on_others(model)
    print(f"unseen volume {Path(args.image).name} {image.data.shape}, slicing axis {axis}, "
          f"corrected slices {corrected}")
    print(f"Dice on the {len(others)} other slices: before {before:.4f} -> after {after:.4f} "
          f"({after - before:+.4f}); fine-tuning {done.steps_run} steps in {seconds:.1f} s "
          f"on {device} (best validation Dice {done.best_dice:.4f} at step {done.best_step})")


def throughput(args, device):
    from napari_vmunet.engine.training.losses import segmentation_loss
    from napari_vmunet.model import build_model

    x = torch.randn(32, 3, 256, 256, device=device)
    y = (torch.rand(32, 256, 256, device=device) > 0.5).long()
    models = {"ours": build_model("isic").to(device)}
    if args.authors_repo:
        from authors_parity import _import_authors

        theirs = _import_authors(args.authors_repo)(num_classes=1, input_channels=3,
                                                    depths=[2, 2, 2, 2],
                                                    depths_decoder=[2, 2, 2, 1]).to(device)
        models["authors"] = theirs
    print(f"training step, released configuration, 256², batch 32 ({device}):")
    for name, model in models.items():
        logits_of = model.forward_logits if name == "ours" else model.vmunet
        for precision in ("fp32", "bf16"):
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(logits_of=logits_of, optimizer=optimizer, precision=precision):
                with torch.autocast(device.type, dtype=torch.bfloat16,
                                    enabled=precision == "bf16"):
                    logits = logits_of(x)
                loss = segmentation_loss(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            for _ in range(3):
                step()
            times = []
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.repeats):
                _sync(device)
                start = time.perf_counter()
                step()
                _sync(device)
                times.append(time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            print(f"  {name:8s} {precision}: {statistics.median(times) * 1000:7.1f} ms "
                  f"(median of {args.repeats}), peak {peak:.1f} GiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--base", type=Path)
    parser.add_argument("--train-image", type=Path)
    parser.add_argument("--train-mask", type=Path)
    parser.add_argument("--save-base", type=Path)
    parser.add_argument("--base-steps", type=int, default=1500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--mask", type=Path)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--authors-repo", type=Path)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.image:
        usefulness(args, device)
    if args.throughput:
        throughput(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
