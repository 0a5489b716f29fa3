"""Training the network (fine-tuning with ``learn="network"``, and data-set training) on real
volumes: learning, stopping, saving, bad input. The pixel classifier, fine-tuning's default,
is tests/engine/test_classifier.py."""

import io
import itertools
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest
import torch

from napari_vmunet.engine import Segmenter
from napari_vmunet.engine.cuda_graphs import GraphedStep
from napari_vmunet.engine.events import Notice, TrainingDone, TrainingStep, ValidationResult
from napari_vmunet.engine.training import trainer as trainer_module
from napari_vmunet.engine.training.data import prepare_slices, split_slices
from napari_vmunet.engine.training.finetuner import FineTuner
from napari_vmunet.engine.training.settings import FINE_TUNING_NETWORK, TrainingSettings
from napari_vmunet.engine.training.trainer import Trainer
from napari_vmunet.io import read_image
from napari_vmunet.model import VMUNet, VMUNetConfig
from napari_vmunet.model.info import ModelInfo
from napari_vmunet.recipes import RECIPES

from ..conftest import DATA

SMALL = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1),
             d_state=8)


@pytest.fixture(scope="module")
def head():
    return (read_image(DATA / "robex_t1_3mm.nii.gz").data,
            read_image(DATA / "robex_brainmask_3mm.nii.gz").data.astype(np.int64))


def network_settings(**fields):
    """Settings in which the network itself learns."""
    return replace(FINE_TUNING_NETWORK, **fields)


def small_model(seed=0, **config):
    torch.manual_seed(seed)
    model = VMUNet(VMUNetConfig(**{**SMALL, **config}))
    model.info = ModelInfo(RECIPES["mri"])
    return model


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def run(tuner):
    events = list(tuner.run())
    assert isinstance(events[-1], TrainingDone)
    return events


def test_fine_tuning_on_three_corrected_slices_improves_the_others(head):
    image, mask = head
    model = small_model()
    axis, corrected = 2, [25, 40, 55]
    others = [i for i in range(image.shape[axis]) if i not in corrected]

    def dice_on_others():
        labels = Segmenter(model, device="cpu").segment(image, axis=axis).labels
        return dice(np.take(labels, others, axis) > 0, np.take(mask, others, axis) > 0)

    before = dice_on_others()
    # a model from scratch: its encoder must learn too
    settings = network_settings(steps=60, batch_size=4, learning_rate=2e-3, validate_every=10,
                                decoder_only=False)
    events = run(FineTuner(model, image, mask, corrected, axis, settings=settings,
                           device="cpu"))
    after = dice_on_others()
    validations = [e for e in events if isinstance(e, ValidationResult)]
    assert len(validations) == 6 and validations[-1].best_dice == events[-1].best_dice
    assert after > before + 0.2 and after > 0.7, (before, after)


def test_all_corrected_slices_train_by_default_and_validation_says_what_it_measures(head):
    image, mask = head
    settings = network_settings(steps=4, batch_size=2, validate_every=2)
    tuner = FineTuner(small_model(), image, mask, [30, 40, 50], 2, settings=settings,
                      device="cpu")
    notices = [e.message for e in run(tuner) if isinstance(e, Notice)]
    assert any("all 3 corrected slice(s) train the model" in n for n in notices)
    assert len(tuner.trainer.train) == len(tuner.trainer.validation) == 3
    held_out = network_settings(steps=4, batch_size=2, validate_every=2, held_out=0.2)
    tuner = FineTuner(small_model(), image, mask, [30, 40, 50], 2, settings=held_out,
                      device="cpu")
    assert not [e for e in run(tuner) if isinstance(e, Notice)]
    assert (len(tuner.trainer.train), len(tuner.trainer.validation)) == (2, 1)
    few = run(FineTuner(small_model(), image, mask, [30, 40], 2, settings=held_out,
                        device="cpu"))
    assert any("correct 3 or more" in e.message for e in few if isinstance(e, Notice))
    with pytest.raises(ValueError, match="held-out share"):
        TrainingSettings(held_out=1.0)


def test_seeded_runs_are_identical_and_decoder_only_keeps_the_encoder(head):
    image, mask = head
    settings = network_settings(steps=6, batch_size=2, validate_every=3, decoder_only=True)
    models = [small_model(), small_model()]
    encoder_before = {k: v.clone() for k, v in models[0].state_dict().items()
                      if k.startswith(("vmunet.patch_embed", "vmunet.layers."))}
    decoder_before = models[0].state_dict()["vmunet.final_conv.weight"].clone()
    for model in models:
        run(FineTuner(model, image, mask, [20, 30, 40, 50], 2, settings=settings, device="cpu"))
    a, b = models[0].state_dict(), models[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in encoder_before.items())
    assert not torch.equal(a["vmunet.final_conv.weight"], decoder_before)


def test_stopping_keeps_the_best_weights(head):
    image, mask = head
    model = small_model()
    tuner = FineTuner(model, image, mask, [20, 30, 40, 50, 60], 2, device="cpu",
                      settings=network_settings(steps=100, batch_size=2, validate_every=2))
    events = tuner.run()
    for event in events:
        if isinstance(event, ValidationResult) and event.step >= 4:
            break
    events.close()  # the user pressed Stop
    best = {k: v.clone() for k, v in tuner.trainer.best_state.items()}
    tuner.restore_best()
    assert all(torch.equal(model.state_dict()[k].cpu(), v) for k, v in best.items())
    assert tuner.trainer.best_dice > 0


def test_a_nan_loss_stops_and_restores_the_best(head, monkeypatch):
    image, mask = head
    model = small_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    forward, calls = model.forward_logits, []

    def poisoned(x):
        calls.append(1)
        out = forward(x)
        return out * float("nan") if len(calls) > 3 else out

    monkeypatch.setattr(model, "forward_logits", poisoned)
    events = run(FineTuner(model, image, mask, [20, 30, 40], 2, device="cpu",
                           settings=network_settings(steps=50, batch_size=2, validate_every=10)))
    assert events[-1].stop_reason == "NaN loss"
    assert any("the loss became nan" in e.message for e in events if isinstance(e, Notice))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in initial.items())


def test_extra_label_values_are_refused_or_extend_the_head(head):
    image, mask = head
    labels = mask.copy()
    labels[labels.shape[0] // 2 :][labels[labels.shape[0] // 2 :] > 0] = 2  # right half: class 2
    with pytest.raises(ValueError, match="labels use values up to 2 but the model knows 2"):
        FineTuner(small_model(), image, labels, [30], 2, device="cpu")
    tuner = FineTuner(small_model(), image, labels, [30, 40], 2, device="cpu",
                      extend_classes=True, settings=network_settings(steps=2, batch_size=2))
    assert run(tuner)[-1].steps_run == 2


@pytest.mark.parametrize("slices, labels_shape, message", [
    ([], None, "no corrected slices given"),
    ([200], None, "slice 200 does not exist: axis 2 has slices 0..76"),
    ([0, 1], None, "hold no labels at all"),
    (None, (58, 75, 76), "labels have shape"),
])
def test_bad_input(head, slices, labels_shape, message):
    image, mask = head
    labels = mask if labels_shape is None else np.zeros(labels_shape, np.int64)
    with pytest.raises(ValueError, match=message):
        FineTuner(small_model(), image, labels, slices, 2, device="cpu")
    with pytest.raises(ValueError, match="labels must be integers"):
        FineTuner(small_model(), image, mask.astype(np.float32), None, 2, device="cpu")
    with pytest.raises(ValueError, match="no slice holds a label"):
        FineTuner(small_model(), image, np.zeros_like(mask), None, 2, device="cpu")


def test_validation_split_is_spread_and_disjoint():
    train, val = split_slices(range(40), seed=0)
    assert len(val) == 8 and not set(train) & set(val) and set(train) | set(val) == set(range(40))
    assert max(val) - min(val) > 20
    assert split_slices([3, 7], seed=0) == ([3, 7], [])
    assert split_slices([3, 7, 9], seed=0, fraction=0) == ([3, 7, 9], [])


@pytest.mark.gpu
def test_fine_tuning_on_cuda_in_bf16(head):
    image, mask = head
    model = small_model()
    events = run(FineTuner(model, image, mask, [25, 40, 55], 2, device="cuda",
                           settings=network_settings(steps=40, batch_size=8, learning_rate=2e-3,
                                                     validate_every=10)))
    validations = [e for e in events if isinstance(e, ValidationResult)]
    assert events[-1].stop_reason == "finished" and validations[-1].best_dice > 0.6
    assert next(model.parameters()).device.type == "cuda"


class CountedCaptures(GraphedStep):
    """The engine's graphed step, counting the batch shapes it captured."""

    shapes: ClassVar[list] = []

    def _capture(self, x, y):
        super()._capture(x, y)
        CountedCaptures.shapes.append(tuple(x.shape))


class NeverCaptured(GraphedStep):
    def __init__(self, step, **kwargs):
        super().__init__(step, **kwargs)
        self.eager_because = "compared against the CUDA graph"


@pytest.mark.gpu
def test_the_captured_training_step_trains_as_the_eager_one(head, monkeypatch):
    """On CUDA every step after the warm-up replays one CUDA graph; the losses, the schedule's
    rates and the Dice are those of the same training run eagerly."""
    image, mask = head
    settings = network_settings(steps=12, batch_size=4, validate_every=6, augment=False,
                                bf16=False, learning_rate=2e-3)
    runs = {}
    for name, step_class in [("graph", CountedCaptures), ("eager", NeverCaptured)]:
        monkeypatch.setattr(trainer_module, "GraphedStep", step_class)
        CountedCaptures.shapes = []
        model = small_model(drop_path_rate=0.0)  # stochastic depth draws differ in a graph
        events = run(FineTuner(model, image, mask, [25, 35, 45, 55, 65], 2, device="cuda",
                               settings=settings))
        runs[name] = events
        if name == "graph":
            # captured once (at step 3), for batches of 4
            assert [shape[0] for shape in CountedCaptures.shapes] == [4]
    steps = {name: [e for e in events if isinstance(e, TrainingStep)]
             for name, events in runs.items()}
    assert [e.learning_rate for e in steps["graph"]] == [e.learning_rate for e in steps["eager"]]
    graph_loss = np.array([e.loss for e in steps["graph"]])
    eager_loss = np.array([e.loss for e in steps["eager"]])
    assert len(graph_loss) == 12 and graph_loss[-1] < graph_loss[0]
    np.testing.assert_allclose(graph_loss, eager_loss, rtol=1e-3)
    assert abs(runs["graph"][-1].best_dice - runs["eager"][-1].best_dice) < 0.01


@pytest.mark.gpu
def test_a_nan_loss_in_the_captured_step_leaves_weights_and_optimizer_finite(head,
                                                                           monkeypatch):
    """The captured step cannot ask the host whether the loss is finite: AdamW skips the update
    on the GPU. Poisoned when captured, the first replay's loss is NaN and changes nothing."""
    image, mask = head
    model = small_model()
    forward = model.forward_logits

    def poisoned_when_captured(x):
        out = forward(x)
        return out * float("nan") if torch.cuda.is_current_stream_capturing() else out

    monkeypatch.setattr(model, "forward_logits", poisoned_when_captured)
    tuner = FineTuner(model, image, mask, [20, 30, 40], 2, device="cuda",
                      settings=network_settings(steps=20, batch_size=2, validate_every=10))
    after_last_good_step = None
    for event in tuner.run():
        if isinstance(event, TrainingStep):
            after_last_good_step = {k: v.clone() for k, v in model.state_dict().items()}
        if isinstance(event, Notice) and "the loss became nan" in event.message:
            break  # before the best weights are restored
    assert tuner.trainer.step == 3  # two eager steps, then the captured one
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in after_last_good_step.items())
    moments = [t for s in tuner.trainer.optimizer.state.values() for t in s.values()]
    assert moments and all(bool(torch.isfinite(t).all()) for t in moments)


@pytest.mark.gpu
def test_out_of_memory_while_capturing_halves_the_batch_and_captures_again(head,
                                                                         monkeypatch):
    image, mask = head
    model = small_model()
    forward = model.forward_logits
    monkeypatch.setattr(trainer_module, "GraphedStep", CountedCaptures)
    CountedCaptures.shapes = []

    def short_of_memory_for_4(x):
        if x.shape[0] > 2 and torch.cuda.is_current_stream_capturing():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    monkeypatch.setattr(model, "forward_logits", short_of_memory_for_4)
    events = run(FineTuner(model, image, mask, [20, 30, 40, 50, 60], 2, device="cuda",
                           settings=network_settings(steps=8, batch_size=8, validate_every=4)))
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert "out of GPU memory: continuing with batches of 2 slices" in notices
    assert [shape[0] for shape in CountedCaptures.shapes] == [2]
    assert events[-1].steps_run == 8 and events[-1].stop_reason == "finished"


def _trainer_on(device, head, steps):
    image, mask = head
    model = small_model().to(device)
    data = prepare_slices(image, mask, [30, 40, 50], 2, RECIPES["mri"],
                          model.config.size_multiple, torch.device(device))
    return Trainer(model, data, data, network_settings(steps=steps, batch_size=2,
                                                       validate_every=3), torch.device(device))


def _saved_and_read_back(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


@pytest.mark.gpu
def test_a_training_state_resumes_on_the_other_device(head):
    """Saved on the CPU (AdamW unfused, its rate a number, as earlier versions saved it
    everywhere) and resumed on CUDA, where AdamW runs fused from a rate tensor; and back."""
    on_cpu = _trainer_on("cpu", head, steps=3)
    run_events = list(on_cpu.run())
    on_cuda = _trainer_on("cuda", head, steps=6)
    on_cuda.load_state(_saved_and_read_back(on_cpu.state()))
    group = on_cuda.optimizer.param_groups[0]
    assert group["fused"] and group["lr"] is on_cuda._learning_rate
    assert all(s["step"].device.type == "cuda" for s in on_cuda.optimizer.state.values())
    run_events = list(on_cuda.run())
    assert on_cuda.step == 6 and run_events[-1].stop_reason == "finished"
    back_on_cpu = _trainer_on("cpu", head, steps=8)
    back_on_cpu.load_state(_saved_and_read_back(on_cuda.state()))
    assert not back_on_cpu.optimizer.param_groups[0]["fused"]
    assert list(back_on_cpu.run())[-1].steps_run == 8


def test_learning_rate_warms_up_then_falls_to_a_hundredth(head):
    image, mask = head
    tuner = FineTuner(small_model(), image, mask, [30, 40], 2, device="cpu",
                      settings=network_settings(steps=40, learning_rate=1e-3,
                                                warmup_fraction=0.1, validate_every=10))
    events = run(tuner)
    rates = [e.learning_rate for e in events if isinstance(e, TrainingStep)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in itertools.pairwise(rates[3:]))
    assert 1e-5 < rates[-1] < 1.5e-5  # the last step is 35/36 of the way down the cosine


def test_out_of_memory_halves_the_training_batch(head, monkeypatch):
    image, mask = head
    model = small_model()
    forward = model.forward_logits

    def limited(x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    monkeypatch.setattr(model, "forward_logits", limited)
    events = run(FineTuner(model, image, mask, [20, 30, 40, 50], 2, device="cpu",
                           settings=network_settings(steps=3, batch_size=8, validate_every=3,
                                                     held_out=0.2)))
    notices = [e.message for e in events if isinstance(e, Notice)]
    # 3 training slices (one of the 4 held out) -> batches of 3, which "do not fit"; halved to
    # 1, training goes on
    assert "out of GPU memory: continuing with batches of 1 slice" in notices
    assert events[-1].steps_run == 3


def test_training_slices_are_resampled_exactly_as_segmentation_does(head):
    """A recipe with a pixel size: training sees each slice as the Segmenter will show it to
    the model (same resampling, same padding), and the labels follow the image."""
    from napari_vmunet.engine.preprocess import Resize, intensity_map, normalise

    image, mask = head
    recipe = RECIPES["t1-brain"]
    k = image.shape[2] // 2
    data = prepare_slices(image, mask, [k], 2, recipe, 32, torch.device("cpu"),
                          pixel_spacing=(3.0, 3.0))
    h, w = image.shape[:2]
    assert data.sizes == [(3 * h, 3 * w)]
    mapping, _ = intensity_map(image, recipe)
    resize = Resize.plan((h, w), recipe, 32, (3.0, 3.0))
    raw = torch.from_numpy(image[None, None, :, :, k].astype(np.float32))
    expected = resize.to_model(normalise(raw, mapping, recipe))
    assert data.images.shape[-2:] == expected.shape[-2:]
    assert torch.allclose(data.images[:, :1], expected, atol=1e-6)
    brain = data.labels[0, : 3 * h, : 3 * w].float().mean().item()
    assert abs(brain - (mask[:, :, k] > 0).mean()) < 0.01
