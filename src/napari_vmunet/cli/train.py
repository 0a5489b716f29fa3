"""``napari-vmunet finetune`` and ``napari-vmunet train``: the training engine from a shell.

finetune: one image and its corrected labels -> a new checkpoint that never replaces its parent.
train: a data set of image/label files -> a checkpoint, from scratch, from VMamba-S ImageNet
weights or from a checkpoint; resumable; DistributedDataParallel under ``torchrun``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..engine.training.settings import (
    DATA_SET_TRAINING,
    FINE_TUNING,
    FINE_TUNING_NETWORK,
    LEARN,
    fine_tuning,
)
from ..model.config import PRESETS
from ..recipes import RECIPES


def _settings(args, defaults):
    """The run's TrainingSettings: ``defaults`` with what the command line set (steps and
    learning rate left unset keep the defaults')."""
    return replace(defaults, steps=defaults.steps if args.steps is None else args.steps,
                   learning_rate=defaults.learning_rate if args.lr is None else args.lr,
                   batch_size=args.batch_size, validate_every=args.validate_every,
                   decoder_only=args.decoder_only, seed=args.seed)


def _progress(events, total, quiet, label):
    """Pass a training generator's events through, drawing a tqdm bar and printing results."""
    from tqdm import tqdm

    from ..engine.events import Notice, TrainingStep, ValidationResult

    with tqdm(total=total, desc=label, unit="step", disable=quiet) as bar:
        for event in events:
            if isinstance(event, TrainingStep):
                bar.n = event.step
                bar.set_postfix(loss=f"{event.loss:.3f}", lr=f"{event.learning_rate:.1e}")
            elif isinstance(event, ValidationResult):
                dice = ", ".join(f"{d:.3f}" for d in event.dice)
                tqdm.write(f"step {event.step}: validation Dice {dice}"
                           + (" (best)" if event.improved else ""))
            elif isinstance(event, Notice):
                tqdm.write(event.message)
            yield event


def finetune(args: argparse.Namespace) -> int:
    from ..bundled import default_checkpoint
    from ..checkpoint import check_save_path, load_checkpoint, save_checkpoint
    from ..engine.events import TrainingDone
    from ..engine.training.finetuner import FineTuner
    from ..io import read_image
    from ..recipes import chosen_recipe

    args.checkpoint = args.checkpoint or str(default_checkpoint())
    output = Path(args.output)
    check_save_path(output, overwrite=args.overwrite, parent=args.checkpoint)
    applied = _check_apply_path(args) if args.apply else None
    image, labels = read_image(args.image), read_image(args.labels)
    model = load_checkpoint(args.checkpoint)
    axis = args.axis
    if axis is None and labels.data.ndim == 3:
        axis = image.geometry.axial_axis()
    slices = [int(s) for s in args.slices.split(",")] if args.slices else None
    tuner = FineTuner(model, image.data, labels.data.astype(int, copy=False), slices=slices,
                      axis=axis, recipe=chosen_recipe(model, args.recipe),
                      settings=replace(_settings(args, fine_tuning(args.learn)),
                                       held_out=args.held_out),
                      device=args.device,
                      extend_classes=args.extend_classes, spacing=image.geometry.spacing_mm())
    print(f"fine-tuning on {len(tuner.slices)} slice(s) along axis {tuner.axis}: "
          f"{', '.join(map(str, tuner.slices[:20]))}{' ...' if len(tuner.slices) > 20 else ''}")
    done = None
    for event in _progress(tuner.run(), tuner.settings.steps, args.quiet, "fine-tuning"):
        if isinstance(event, TrainingDone):
            done = event
    provenance = {"image": Path(args.image).name, "labels": Path(args.labels).name,
                  **tuner.provenance(), "stop_reason": done.stop_reason}
    save_checkpoint(model, output, recipe=tuner.recipe, provenance=provenance,
                    overwrite=args.overwrite)
    print(f"best validation Dice {done.best_dice:.4f} at step {done.best_step} of "
          f"{done.steps_run} ({done.stop_reason}, {done.seconds:.0f} s)")
    print(f"saved {output}")
    if applied is not None or args.suggest:
        _apply(model, tuner, image, labels, applied, args)
    return 0


def _check_apply_path(args) -> Path:
    """Where --apply writes, refused before any training: a labels format, not an input, not
    an existing file unless --overwrite."""
    from ..io import image_format

    path = Path(args.apply)
    if image_format(path) is None:
        raise ValueError(f"--apply: choose an output ending in .nii.gz, .nii, .tif or .nrrd, "
                         f"not {path.name}")
    for given in (args.image, args.labels):
        if path.exists() and path.resolve() == Path(given).resolve():
            raise ValueError(f"--apply would write over the input {given}; choose a new name")
    if path.exists() and not args.overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or use --overwrite")
    return path


def _apply(model, tuner, image, labels, path: Path | None, args) -> None:
    """Segment the image with the fine-tuned model: write labels to ``path`` in which the
    corrected slices are exactly the user's, and with --suggest print the uncorrected slices
    the new model is least sure of."""
    from ..engine import Segmenter
    from ..engine.corrections import applied_labels, slices_to_correct, structure_slices
    from ..io import write_labels
    from .segment import with_progress

    segmenter = Segmenter(model, tuner.recipe, device=args.device)
    done = with_progress(segmenter.run(image.data, axis=tuner.axis,
                                       channel_axis=image.geometry.channel_axis,
                                       spacing=image.geometry.spacing_mm(),
                                       uncertainty=bool(args.suggest),
                                       prior=tuner.shape_prior()),
                         "applying" if path else "suggesting", show=not args.quiet)
    merged, removed = applied_labels(done.labels, labels.data, tuner.slices, tuner.axis,
                                     only_connected=not args.keep_unconnected)
    if args.suggest:
        among = None if tuner.axis is None else structure_slices(merged, tuner.axis)
        suggested = slices_to_correct(done.uncertainty, args.suggest, tuner.slices, among)
        print(f"suggest: correct slices {', '.join(map(str, suggested)) or 'none'} next "
              "(where the fine-tuned model is least sure, on the structure)")
    if path is None:
        return
    write_labels(merged, path, labels.geometry, overwrite=args.overwrite)
    n = 1 if tuner.axis is None else merged.shape[tuner.axis]
    print(f"applied {path}: {n - len(tuner.slices)} slice(s) from the fine-tuned model, "
          f"{len(tuner.slices)} corrected slice(s) as you painted them ({done.seconds:.0f} s)")
    if removed:
        print(f"left out {removed} voxel(s) in regions that reach none of your corrections "
              "(--keep-unconnected keeps them)")


def train(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import check_save_path, init_from_vmamba, load_checkpoint, save_checkpoint
    from ..engine.device import resolve_device
    from ..engine.events import TrainingDone, TrainingStep
    from ..engine.training.data import SliceSet, split_slices, volume_slices
    from ..engine.training.trainer import LogitsOf, Trainer
    from ..io import read_image
    from ..model import VMUNet, VMUNetConfig
    from ..model.info import ModelInfo
    from ..recipes import chosen_recipe, get_recipe, recipe_for
    from . import distributed

    if len(args.images) != len(args.labels):
        raise ValueError(f"{len(args.images)} images but {len(args.labels)} label files: give "
                         "one label file per image, in the same order")
    output = Path(args.output)
    state_path = output.with_name(output.name + ".train-state.pt")
    if not args.resume:
        check_save_path(output, overwrite=args.overwrite, parent=args.checkpoint)
    elif not state_path.exists():
        raise FileNotFoundError(f"--resume: no training state {state_path} to resume from")
    rank = distributed.init(backend="nccl" if args.device != "cpu" and torch.cuda.is_available()
                            else "gloo")
    device = resolve_device(rank.device(args.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)

    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
        recipe = chosen_recipe(model, args.recipe) or recipe_for(model)[0]
    else:
        config = VMUNetConfig(**{**PRESETS[args.config].to_dict(), "num_classes": args.classes,
                                 "image_size": args.size})
        model = VMUNet(config)
        recipe = get_recipe(args.recipe or "mri")
        names = recipe.class_names
        model.info = ModelInfo(recipe, names if names and len(names) == config.num_classes
                               else None)
        if args.init_vmamba:
            counts = init_from_vmamba(model, args.init_vmamba)
            if rank.is_main:
                print(f"initialised from VMamba: {counts['encoder']} encoder and "
                      f"{counts['decoder']} decoder tensors")
    model.to(device)
    multiple = model.config.size_multiple
    size = recipe.input_size or args.size
    axes = [int(a) for a in args.axes.split(",")]
    sets = []
    for image_path, labels_path in zip(args.images, args.labels, strict=True):
        image, labels = read_image(image_path), read_image(labels_path)
        if labels.data.shape != image.data.shape[: labels.data.ndim]:
            raise ValueError(f"{labels_path} has shape {labels.data.shape} but {image_path} "
                             f"has {image.data.shape}")
        sets.append(volume_slices(image.data, labels.data.astype(int, copy=False), axes, recipe,
                                  multiple, device, size, image.geometry.spacing_mm()))
    data = SliceSet.concat(sets)
    if int(data.labels.max()) >= max(2, model.config.num_classes):
        raise ValueError(f"labels use values up to {int(data.labels.max())} but the model has "
                         f"{model.config.num_classes} classes; set --classes")
    train_idx, val_idx = split_slices(range(len(data)), args.seed, args.val_fraction)
    val_idx = val_idx or train_idx
    per_process = max(1, -(-args.batch_size // rank.world_size))
    ddp = None
    if rank.world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            LogitsOf(model), device_ids=[device.index] if device.type == "cuda" else None)
    settings = replace(_settings(args, DATA_SET_TRAINING), batch_size=per_process,
                       zoom=args.zoom, gamma=args.gamma)
    trainer = Trainer(model, data.subset(train_idx), data.subset(val_idx), settings,
                      device, ddp_model=ddp, rank=rank.rank, value_range=recipe.value_range)
    if args.resume:
        trainer.load_state(torch.load(state_path, map_location="cpu", weights_only=True))
        if rank.is_main:
            print(f"resumed at step {trainer.step} (best Dice {trainer.best_dice:.4f})")
    if rank.is_main:
        print(f"{len(train_idx)} training and {len(val_idx)} validation slices of "
              f"{size}x{size}; {rank.world_size} process(es), batch {per_process} each")
    done = None
    events = trainer.run()
    if rank.is_main:
        events = _progress(events, settings.steps, args.quiet, "training")
    for event in events:
        if isinstance(event, TrainingStep) and rank.is_main and event.step % args.save_every == 0:
            _save_state(trainer.state(), state_path)
        if isinstance(event, TrainingDone):
            done = event
    if rank.is_main:
        _save_state(trainer.state(), state_path)
        provenance = {"data": [Path(p).name for p in args.images], "axes": axes,
                      "steps": done.steps_run, "best_step": done.best_step,
                      "validation_dice": done.best_dice, "processes": rank.world_size,
                      "init": "checkpoint" if args.checkpoint else
                      ("vmamba" if args.init_vmamba else "scratch")}
        save_checkpoint(model, output, recipe=recipe, provenance=provenance, overwrite=True,
                        dtype=torch.float16 if args.fp16 else None)
        print(f"best validation Dice {done.best_dice:.4f} at step {done.best_step}; "
              f"saved {output} (training state: {state_path.name})")
    distributed.finish(rank)
    return 0


def _save_state(state: dict, path: Path) -> None:
    import torch

    from ..io import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def add_parsers(commands) -> None:
    def common(p, defaults, steps_help=None, lr_help=None):
        p.add_argument("-o", "--output", required=True, help="the new .safetensors checkpoint")
        p.add_argument("--checkpoint", help="the model to start from (.pth or .safetensors; "
                       "finetune's default: the bundled T1 brain model)")
        p.add_argument("--recipe", help=f"preprocessing: {', '.join(RECIPES)} (default: the "
                       "checkpoint's own)")
        p.add_argument("--steps", type=int, default=None,
                       help=f"training steps ({steps_help or defaults.steps})")
        p.add_argument("--lr", type=float, default=None,
                       help=f"peak learning rate ({lr_help or f'{defaults.learning_rate:g}'})")
        p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help=f"slices per step ({defaults.batch_size})")
        p.add_argument("--validate-every", type=int, default=defaults.validate_every,
                       help=f"steps between validations ({defaults.validate_every})")
        p.add_argument("--decoder-only", action=argparse.BooleanOptionalAction,
                       default=defaults.decoder_only,
                       help="keep the encoder frozen (default: "
                       f"{'yes' if defaults.decoder_only else 'no'})")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
        p.add_argument("--seed", type=int, default=0, help="for a repeatable run")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    ft = commands.add_parser(
        "finetune", help="fine-tune a model on the corrected slices of one image",
        description="Fine-tune on the slices you corrected; validation Dice is printed as it "
        "goes and the best weights are saved to a new file (never over the parent).")
    ft.add_argument("image", help="the image or volume")
    ft.add_argument("labels", help="its labels (the corrected slices hold your corrections)")
    ft.add_argument("--slices", help="corrected slice indices, e.g. 10,11,12 (default: every "
                    "slice holding a label)")
    ft.add_argument("--axis", type=int, help="slicing axis (default: the axial one)")
    ft.add_argument("--learn", choices=LEARN, default=FINE_TUNING.learn,
                    help="what learns: 'classifier', a pixel classifier on the model's "
                    "features and your corrected slices' shapes (seconds, also on a CPU; "
                    "--batch-size is the network's and does not apply), or "
                    f"'network', the model itself (see --decoder-only) ({FINE_TUNING.learn})")
    ft.add_argument("--held-out", type=float, default=FINE_TUNING.held_out, metavar="SHARE",
                    help="the share of the corrected slices kept out of training to validate "
                    f"on ({FINE_TUNING.held_out:g}: all train the model, which generalises "
                    "better from a few slices)")
    ft.add_argument("--extend-classes", action="store_true",
                    help="grow the model's head when the labels have more classes")
    ft.add_argument("--apply", metavar="OUT",
                    help="then segment the image with the fine-tuned model and write labels "
                    "to OUT whose corrected slices are exactly yours")
    ft.add_argument("--keep-unconnected", action="store_true",
                    help="with --apply, also keep the regions the model finds that touch none "
                    "of your corrected slices' labels (left out by default: a model tuned on "
                    "a few slices also finds look-alikes elsewhere)")
    ft.add_argument("--suggest", type=int, metavar="N", default=0,
                    help="then print the N uncorrected slices the fine-tuned model is least "
                    "sure of: the ones to correct next")
    common(ft, FINE_TUNING,
           steps_help=f"{FINE_TUNING.steps} for the classifier, "
           f"{FINE_TUNING_NETWORK.steps} for the network",
           lr_help=f"{FINE_TUNING.learning_rate:g} for the classifier, "
           f"{FINE_TUNING_NETWORK.learning_rate:g} for the network")
    ft.set_defaults(run=finetune)

    tr = commands.add_parser(
        "train", help="train a model on a data set of labelled images",
        description="Train on every slice (along --axes) of labelled images; resumable "
        "(--resume); runs under torchrun with DistributedDataParallel.")
    tr.add_argument("--images", nargs="+", required=True, help="image files")
    tr.add_argument("--labels", nargs="+", required=True, help="label files, same order")
    tr.add_argument("--config", choices=PRESETS, default="small",
                    help="architecture when not starting from --checkpoint: "
                    f"{', '.join(PRESETS)} (small)")
    tr.add_argument("--classes", type=int, default=1, help="classes (1: binary, sigmoid)")
    tr.add_argument("--init-vmamba", help="VMamba-S v0 ImageNet weights to start from")
    tr.add_argument("--axes", default="0,1,2", help="slice along these axes (0,1,2)")
    tr.add_argument("--size", type=int, default=256, help="training slice side (256)")
    tr.add_argument("--val-fraction", type=float, default=DATA_SET_TRAINING.held_out,
                    help=f"validation share ({DATA_SET_TRAINING.held_out:g})")
    tr.add_argument("--save-every", type=int, default=100, help="steps between state saves")
    tr.add_argument("--resume", action="store_true", help="continue from OUTPUT.train-state.pt")
    tr.add_argument("--fp16", action="store_true", help="store the weights in float16")
    tr.add_argument("--zoom", type=float, default=DATA_SET_TRAINING.zoom,
                    help=f"augmentation: random scale up to 1 + ZOOM ({DATA_SET_TRAINING.zoom}), "
                    "for other voxel sizes")
    tr.add_argument("--gamma", type=float, default=DATA_SET_TRAINING.gamma,
                    help="augmentation: contrast curve up to 1 + GAMMA "
                    f"({DATA_SET_TRAINING.gamma}), for other scanners")
    common(tr, DATA_SET_TRAINING)
    tr.set_defaults(run=train)
