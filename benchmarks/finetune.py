"""Does fine-tuning on a few corrected slices help, and how fast is a training step?

Usefulness (default): the correction loop as a user runs it. The model segments the volume
once (the same-run baseline: one plain segmentation); three slices are "corrected" (their
reference labels stand in for the user's painting; ``--slices`` picks others); the model is
fine-tuned on them with ``FineTuner`` and its defaults, then applied (the volume segmented
again, the corrected slices kept as painted). Reported: Dice on the uncorrected slices before
and after, and fine-tune + apply time as a multiple of the plain segmentation.
- ``--base CKPT`` starts from a checkpoint; otherwise ``--train-image/--train-mask`` trains a
  base model first (the "small" configuration, slices along all three axes) and
  ``--save-base`` keeps it (float16) for the CPU run.
- ``--seeds N`` repeats the fine-tuning with seeds 0..N-1 (the spread across seeds).
- ``--next K``: which slice to correct next: a second round from the tuned model with K more
  corrected slices, the K the model suggests (least sure) against K evenly spaced through the
  structure, the same budget; Dice of the whole volume after each.

Throughput (``--throughput``): one training step (forward, backward, AdamW; BCE + Dice from
logits) of the released configuration at 256², batch 32, fp32 and bf16 — ours, and with
``--authors-repo`` the authors' model code in the same run.

    python benchmarks/finetune.py --device cuda --train-image colin.nii.gz \\
        --train-mask colin_brain.nii.gz --image robex.nii.gz --mask robex_mask.nii.gz \\
        --save-base base.safetensors [--throughput --authors-repo DIR]
    python benchmarks/finetune.py --device cpu --base base.safetensors \\
        --image robex.nii.gz --mask robex_mask.nii.gz
    python benchmarks/finetune.py --device cpu \\
        --base src/napari_vmunet/models/t1_brain.safetensors --recipe ct --axis 0 \\
        --image src/napari_vmunet/samples/ct_lung_image.nrrd \\
        --mask src/napari_vmunet/samples/ct_lung_tumour.nrrd --slices 4,7,10 --seeds 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import replace
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
    """The correction loop as a user runs it, against one plain segmentation of the same
    volume in the same run: fine-tune on the corrected slices, apply (segment with the new
    model, the corrected slices kept as painted, and with the regions reaching no correction
    dropped), Dice on the uncorrected slices. With ``--next K``, a second round from the tuned
    model: K more slices corrected, chosen by the model's suggestion or evenly spaced (the same
    budget), and the Dice of the whole volume after each."""
    from napari_vmunet.checkpoint import load_checkpoint
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.engine.corrections import (
        connected_to_corrections,
        keep_corrections,
        slices_to_correct,
        structure_slices,
    )
    from napari_vmunet.engine.events import TrainingDone
    from napari_vmunet.engine.training.finetuner import FineTuner
    from napari_vmunet.engine.training.settings import fine_tuning
    from napari_vmunet.io import read_image
    from napari_vmunet.recipes import chosen_recipe

    base = load_checkpoint(args.base).to(device) if args.base else train_base(args, device)
    image, mask = read_image(args.image), read_image(args.mask)
    reference = mask.data > 0
    truth = reference.astype(np.uint8)
    axis = image.geometry.axial_axis() if args.axis is None else args.axis
    spacing = image.geometry.spacing_mm()
    along = np.moveaxis(reference, axis, 0)
    holding = [i for i in range(along.shape[0]) if along[i].any()]
    if args.slices:
        corrected = [int(k) for k in args.slices.split(",")]
    else:  # three slices through the structure, at 30, 50 and 70 % of its extent
        corrected = [holding[int(len(holding) * q)] for q in (0.3, 0.5, 0.7)]
    recipe = chosen_recipe(base, args.recipe)
    defaults = fine_tuning(args.learn)
    settings = replace(defaults, decoder_only=defaults.decoder_only
                       if args.decoder_only is None else args.decoder_only,
                       steps=args.steps or defaults.steps,
                       batch_size=args.batch_size or defaults.batch_size,
                       learning_rate=args.lr or defaults.learning_rate,
                       held_out=defaults.held_out if args.held_out is None else args.held_out)

    def segmented(model, uncertainty=False, prior=None):
        _sync(device)
        start = time.perf_counter()
        done = Segmenter(model, recipe, device=device).segment(
            image.data, axis=axis, spacing=spacing, uncertainty=uncertainty, prior=prior)
        _sync(device)
        return done, time.perf_counter() - start

    def dice_outside(labels, slices):
        others = [i for i in range(along.shape[0]) if i not in slices]
        return dice(np.take(labels > 0, others, axis), np.take(reference, others, axis))

    def loop(model, slices, seed):
        """Fine-tune ``model`` in place on ``slices`` and apply it."""
        tuner = FineTuner(model, image.data, truth, slices, axis, recipe,
                          replace(settings, seed=seed), device=device, spacing=spacing)
        _sync(device)
        start = time.perf_counter()
        for event in tuner.run():
            if isinstance(event, TrainingDone):
                trained = event
        _sync(device)
        tuned_s = time.perf_counter() - start
        done, apply_s = segmented(model, uncertainty=bool(args.next), prior=tuner.shape_prior())
        kept = keep_corrections(done.labels, truth, slices, axis)
        connected = kept.copy()
        connected_to_corrections(connected, slices, axis)
        return kept, connected, done.uncertainty, trained, tuned_s, apply_s

    segmented(base)  # warm-up: kernels compiled and caches filled, as for a user's second run
    plain, plain_s = segmented(base)
    print(f"volume {Path(args.image).name} {image.data.shape}, slicing axis {axis}, structure on "
          f"slices {holding[0]}..{holding[-1]}, corrected slices {corrected}; one plain "
          f"segmentation {plain_s:.1f} s on {device}, Dice on the other slices "
          f"{dice_outside(plain.labels, corrected):.4f}")
    for seed in range(args.seeds):
        model = copy.deepcopy(base)
        kept, connected, unsure, trained, tuned_s, apply_s = loop(model, corrected, seed)
        total = tuned_s + apply_s
        print(f"seed {seed}: Dice on the other slices {dice_outside(connected, corrected):.4f} "
              f"({dice_outside(kept, corrected):.4f} keeping regions that reach no correction); "
              f"fine-tune {trained.steps_run} steps {tuned_s:.1f} s + apply {apply_s:.1f} s = "
              f"{total:.1f} s, {total / plain_s:.1f}x one plain segmentation (best validation "
              f"Dice {trained.best_dice:.4f} at step {trained.best_step})")
        if not args.next:
            continue
        remaining = [i for i in holding if i not in corrected]
        k = min(args.next, len(remaining))
        choices = {
            "suggested": slices_to_correct(unsure, k, corrected,
                                           structure_slices(connected, axis)),
            "suggested from the whole volume": slices_to_correct(unsure, k, corrected),
            "evenly spaced": [remaining[int((j + 0.5) * len(remaining) / k)] for j in range(k)],
        }
        neither = set(corrected).union(*choices.values())
        for how, extra in choices.items():
            slices = sorted(set(corrected) | set(extra))
            _, second, *_ = loop(copy.deepcopy(model), slices, seed)
            print(f"  + {k} {how} slices {sorted(extra)}: Dice of the volume "
                  f"{dice(second > 0, reference):.4f}, on the slices neither round-2 choice "
                  f"corrected {dice_outside(second, neither):.4f}")


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
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default: the learner's)")
    parser.add_argument("--slices", help="corrected slices, e.g. 4,7,10 (default: three "
                        "through the structure)")
    parser.add_argument("--axis", type=int, help="slicing axis (default: the axial one)")
    parser.add_argument("--recipe", help="preprocessing (default: the checkpoint's own)")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning runs, seeds 0..N-1")
    parser.add_argument("--decoder-only", action=argparse.BooleanOptionalAction,
                        help="keep the encoder frozen (default: the learner's)")
    parser.add_argument("--batch-size", type=int, help="default: the learner's")
    parser.add_argument("--learn", choices=("classifier", "network"), default="classifier",
                        help="what learns (default: classifier)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the learner's)")
    parser.add_argument("--held-out", type=float,
                        help="share of the corrected slices held out (default: the learner's)")
    parser.add_argument("--next", type=int, default=0, metavar="K",
                        help="a second round with K more slices, suggested vs evenly spaced")
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
