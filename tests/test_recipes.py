"""Preprocessing recipes: the authors' two, ours, CT windows, and guessing for bare files."""

import pytest

from napari_vmunet.model import PRESETS, VMUNet
from napari_vmunet.recipes import CT_WINDOWS, RECIPES, Recipe, get_recipe, recipe_for


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
    with pytest.raises(ValueError, match="unknown CT window 'liver'"):
        get_recipe("ct", window="liver")
    with pytest.raises(ValueError, match="width"):
        RECIPES["ct"].with_window(40, 0)


def test_recipe_for_guesses_from_the_classes_and_says_so():
    recipe, note = recipe_for(VMUNet(PRESETS["synapse"]))
    assert recipe.name == "synapse-ct"
    assert "stores no preprocessing; guessed 'synapse-ct' from its 9 classes" in note
    assert recipe_for(VMUNet(PRESETS["isic"]))[0].name == "isic"

    model = VMUNet(PRESETS["isic"])
    model.recipe = RECIPES["mri"].to_dict()  # as read from our checkpoint's metadata
    assert recipe_for(model) == (RECIPES["mri"], None)
