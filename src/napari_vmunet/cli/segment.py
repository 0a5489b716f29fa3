"""``napari-vmunet segment`` and ``napari-vmunet demo``: the Segmenter from a shell.

segment: image files in, label files with the inputs' geometry out; under torchrun each process
takes its share of the files. demo: the bundled model on the bundled T1 head, checked against
its reference mask.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..recipes import CT_WINDOWS, RECIPES


@dataclass
class _FileResult:
    source: str
    output: str | None = None
    error: str | None = None
    slices: int = 0
    seconds: float = 0.0
    suggested: list[int] | None = None  # the slices most worth correcting, with --suggest


def _output_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return {".nii": ".nii", ".tif": ".tif", ".tiff": ".tif"}.get(path.suffix.lower(), ".nrrd")


def _planned_outputs(args) -> list[tuple[Path, Path, Path | None]]:
    """(input, labels file, probabilities file or None) for every input, refusing clashes."""
    from ..io import strip_suffix

    inputs = [Path(p) for p in args.inputs]
    if args.output and len(inputs) > 1:
        raise ValueError("-o/--output names one file; with several inputs use --out-dir")
    if args.probabilities and len(inputs) > 1 and Path(args.probabilities).suffix:
        raise ValueError("with several inputs, --probabilities must be a folder")
    plans = []
    for source in inputs:
        stem, suffix = strip_suffix(source.name), _output_suffix(source)
        folder = Path(args.out_dir) if args.out_dir else source.parent
        labels = Path(args.output) if args.output else folder / f"{stem}_labels{suffix}"
        probs = None
        if args.probabilities:
            p = Path(args.probabilities)
            probs = p if len(inputs) == 1 and p.suffix else p / f"{stem}_probabilities{suffix}"
        plans.append((source, labels, probs))
    seen = {}
    for source, labels, _ in plans:
        if labels.resolve() == source.resolve():
            raise ValueError(f"the output {labels} is the input itself")
        if labels in seen:
            raise ValueError(f"{seen[labels]} and {source} would both be written to {labels}")
        seen[labels] = source
    return plans


def _segment(args: argparse.Namespace) -> int:
    import time

    from ..bundled import default_checkpoint
    from ..checkpoint import load_checkpoint
    from ..engine import Segmenter
    from ..engine.corrections import slices_to_correct
    from ..io import read_image, write_labels
    from ..recipes import chosen_recipe
    from . import distributed

    plans = _planned_outputs(args)
    rank = distributed.init()
    try:
        model = load_checkpoint(args.checkpoint or default_checkpoint())
        recipe = chosen_recipe(model, args.recipe, args.window)
        segmenter = Segmenter(model, recipe, device=rank.device(args.device),
                              batch_size=args.batch_size, threshold=args.threshold)
        results = []
        for source, labels_path, probs_path in rank.share(plans):
            result = _FileResult(str(source))
            started = time.perf_counter()
            try:
                for target in (labels_path, probs_path):
                    if target is not None and target.exists() and not args.overwrite:
                        raise FileExistsError(f"{target} already exists; use --overwrite to "
                                              "replace it")
                image = read_image(source)
                geometry = image.geometry
                axis = geometry.axial_axis() if args.axis is None else args.axis
                events = segmenter.run(image.data, axis=axis, channel_axis=geometry.channel_axis,
                                       probabilities=probs_path is not None,
                                       spacing=geometry.spacing_mm(),
                                       uncertainty=bool(args.suggest))
                done = with_progress(events, source.name,
                                      show=rank.is_main and not args.quiet)
                out_geometry = geometry.for_labels()
                write_labels(done.labels, labels_path, out_geometry, overwrite=args.overwrite)
                if probs_path is not None:
                    write_labels(done.probabilities, probs_path, out_geometry,
                                 overwrite=args.overwrite)
                result.output, result.slices = str(labels_path), done.labels.size
                if args.suggest:
                    result.suggested = slices_to_correct(done.uncertainty, args.suggest)
            except (OSError, ValueError, MemoryError) as exc:  # the user's to fix: say what
                result.error = str(exc)
            except Exception as exc:  # report, then go on with the next file
                result.error = f"{type(exc).__name__}: {exc}"
            result.seconds = time.perf_counter() - started
            results.append(result)
        everyone = [r for share in distributed.gather(rank, results) for r in share]
    finally:
        distributed.finish(rank)
    failures = [r for r in everyone if r.error]
    if rank.is_main:
        for r in everyone:
            if not r.error:
                print(f"ok      {r.source} -> {r.output} ({r.seconds:.1f} s)")
                if r.suggested is not None:
                    print(f"suggest {r.source}: correct slices {_listed(r.suggested)} first "
                          "(where the model is least sure)")
        for r in failures:
            print(f"FAILED  {r.source}: {r.error}", file=sys.stderr)
        print(f"{len(everyone) - len(failures)} of {len(everyone)} files segmented"
              + (f" by {rank.world_size} processes" if rank.world_size > 1 else ""))
    return 1 if failures else 0


def _listed(slices: list[int]) -> str:
    return ", ".join(map(str, slices)) or "none (nothing left uncorrected)"


def with_progress(events, name: str, show: bool = True, leave: bool = False):
    """Run a Segmenter's events behind a progress bar of slices (and its notices, printed);
    the SegmentationDone at their end."""
    from tqdm import tqdm

    from ..engine.events import Notice, SegmentationDone, SegmentationStarted, SlicesDone

    done = None
    with tqdm(desc=name, unit="slice", disable=not show, leave=leave) as bar:
        for event in events:
            if isinstance(event, SegmentationStarted):
                bar.reset(total=event.slices)
                bar.set_postfix_str(f"{event.device}, batch {event.batch_size}")
            elif isinstance(event, SlicesDone):
                bar.update(event.stop - event.start)
            elif isinstance(event, Notice) and show:
                tqdm.write(f"{name}: {event.message}")
            elif isinstance(event, SegmentationDone):
                done = event
    return done


def _demo(args: argparse.Namespace) -> int:
    """Segment the bundled T1 head with the bundled model; report Dice and the output file."""
    import numpy as np

    from ..bundled import default_checkpoint, sample_paths
    from ..checkpoint import load_checkpoint
    from ..engine import Segmenter
    from ..io import read_image, write_labels
    from ..metrics import dice

    image_path, reference_path = sample_paths("t1-head")
    image, reference = read_image(image_path), read_image(reference_path)
    model = load_checkpoint(default_checkpoint())
    print(f"model   {default_checkpoint().name} ({model.num_parameters():,} parameters, "
          f"trained on {', '.join(model.info.provenance.get('data', []))})")
    print(f"sample  {image_path.name} {image.data.shape}, voxels "
          f"{' x '.join(f'{s:g}' for s in image.geometry.spacing)} mm")
    segmenter = Segmenter(model, device=args.device)
    done = with_progress(segmenter.run(image.data, axis=image.geometry.axial_axis(),
                                        spacing=image.geometry.spacing_mm()),
                          "segmenting", leave=True)
    brain = done.labels > 0
    overlap = dice(brain, reference.data)
    out_dir = Path(args.out_dir)
    out = out_dir / "t1_head_labels.nii.gz"
    n = 2
    while out.exists():  # never replace an earlier result
        out, n = out_dir / f"t1_head_labels-{n}.nii.gz", n + 1
    write_labels(done.labels, out, image.geometry)
    voxel_ml = float(np.prod(image.geometry.spacing)) / 1000
    print(f"brain   {brain.sum() * voxel_ml:.0f} ml segmented in {done.seconds:.1f} s on "
          f"{segmenter.device}")
    print(f"Dice    {overlap:.4f} against the reference brain mask (this head was one of the "
          "model's training heads; docs/model-card.md has held-out results)")
    print(f"labels  written to {out.resolve()}")
    return 0


def add_parsers(commands) -> None:
    seg = commands.add_parser(
        "segment",
        help="segment images or volumes (NIfTI, TIFF, NRRD) into label files",
        description="Segment each INPUT with a VM-UNet and write labels with the input's "
        "geometry (NIfTI affine and header, TIFF voxel size, NRRD space). Runs under torchrun "
        "too: each process takes its share of the files.",
    )
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    where = seg.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", help="the labels file (one INPUT only)")
    where.add_argument("--out-dir", help="folder for <name>_labels.<ext> (default: next to INPUT)")
    seg.add_argument("--checkpoint", help="model: .pth from the authors' code or .safetensors "
                     "(default: the bundled T1 brain-extraction model)")
    seg.add_argument("--recipe", help=f"preprocessing: {', '.join(RECIPES)} (default: the "
                     "checkpoint's own, or a guess from its classes)")
    seg.add_argument("--window", help="CT window LEVEL,WIDTH in HU, or a preset: "
                     f"{', '.join(CT_WINDOWS)}")
    seg.add_argument("--axis", type=int, help="slicing axis of volumes (default: the axial one)")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    seg.add_argument("--batch-size", type=int, help="slices per batch (default: from memory)")
    seg.add_argument("--threshold", type=float, help="probability threshold for one-class models")
    seg.add_argument("--probabilities", metavar="PATH",
                     help="also write float probabilities (a file, or a folder for several inputs)")
    seg.add_argument("--suggest", type=int, metavar="N", default=0,
                     help="also print the N slices most worth correcting (least sure first)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notices")
    seg.set_defaults(run=_segment)

    demo = commands.add_parser(
        "demo", help="segment the bundled T1 head with the bundled model and check it",
        description="Runs the bundled brain-extraction model on the bundled T1 head sample, "
        "prints Dice against its reference mask and writes the labels (never replacing an "
        "earlier result).")
    demo.add_argument("--out-dir", default="napari-vmunet-demo", help="where to write labels")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    demo.set_defaults(run=_demo)
