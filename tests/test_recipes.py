"""Preprocessing recipes: the authors' two, ours, CT windows, and guessing for bare files."""

import pytest

from napari_vmunet.model import PRESETS, VMUNet
from napari_vmunet.model.info import ModelInfo
from napari_vmunet.recipes import (
    CT_WINDOWS,
    RECIPES,
    Recipe,
    chosen_recipe,
    get_recipe,
    parse_window,
    recipe_for,
)


def test_the_authors_recipes():
    isic, synapse = RECIPES["isic"], RECIPES["synapse-ct"]
    assert (isic.intensity, isic.value_range, isic.color, isic.input_size) == \
        ("minmax", (0.0, 255.0), "rgb", 256)
    assert (isic.interpolation, isic.threshold, isic.labels_at_input_size) == \
        ("bilinear", 0.5, False)
    level, width = synapse.window
    assert (level - width / 2, level + width / 2) == (-125.0, 275.0)
    assert (synapse.value_range, synapse.input_size, synapse.interpolation) == \
        ((0.0, 1.0), 224, "bicubic")
    assert synapse.labels_at_input_size  # argmax at 224², nearest back
    assert len(synapse.class_names) == 9


def test_windows_native_resolution_and_round_trip():
    lung = get_recipe("synapse-ct", window="lung")
    assert lung.window == CT_WINDOWS["lung"] == (-600.0, 1500.0)
    assert get_recipe("ct", window=(30, 300)).window == (30.0, 300.0)
    native = RECIPES["isic"].at_native_resolution()
    assert native.input_size is None and native.color == "rgb"
    assert Recipe.from_dict(lung.to_dict()) == lung
    with pytest.raises(ValueError, match="unknown recipe 'dermoscopy'"):
        get_recipe("dermoscopy")
    with pytest.raises(ValueError, match="a CT window is LEVEL,WIDTH .* got 'liver'"):
        get_recipe("ct", window="liver")
    with pytest.raises(ValueError, match="width"):
        RECIPES["ct"].with_window(40, 0)


def test_recipe_for_guesses_from_the_classes_and_says_so():
    recipe, note = recipe_for(VMUNet(PRESETS["synapse"]))
    assert recipe.name == "synapse-ct"
    assert "stores no preprocessing; guessed 'synapse-ct' from its 9 classes" in note
    assert recipe_for(VMUNet(PRESETS["isic"]))[0].name == "isic"

    model = VMUNet(PRESETS["isic"])
    model.info = ModelInfo.parse(1, RECIPES["mri"].to_dict())  # as read from a checkpoint
    assert recipe_for(model) == (RECIPES["mri"], None)


def test_every_recipe_round_trips_and_a_newer_versions_fields_are_left_out():
    for recipe in RECIPES.values():
        assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict({**RECIPES["mri"].to_dict(), "denoise": True}) == RECIPES["mri"]


def test_one_resolver_for_the_command_line_and_the_widgets():
    """What --recipe/--window and the widgets' two choices give: nothing picked is the
    model's own (None, so that the engine says when it guessed)."""
    model = VMUNet(PRESETS["synapse"])
    assert chosen_recipe(model) is None
    assert chosen_recipe(model, "mri") == RECIPES["mri"]
    assert chosen_recipe(model, window="lung").window == CT_WINDOWS["lung"]
    assert chosen_recipe(model, window="lung").name.startswith("synapse-ct")  # the guess's
    assert chosen_recipe(model, "ct", "30,300").window == (30.0, 300.0)
    assert parse_window("synapse") == parse_window((75, 400)) == (75.0, 400.0)
    with pytest.raises(ValueError, match="width must be positive"):
        parse_window("40,-1")
