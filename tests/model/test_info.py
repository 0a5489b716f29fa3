"""What a loaded model says about itself, checked where it is made."""

import pytest

from napari_vmunet.model.info import ModelInfo
from napari_vmunet.recipes import RECIPES


def test_a_recipe_read_from_a_file_becomes_a_recipe():
    synapse = RECIPES["synapse-ct"]
    info = ModelInfo.parse(9, synapse.to_dict(), list(synapse.class_names), {"data": ["Synapse"]})
    assert info.recipe == RECIPES["synapse-ct"]
    assert info.class_names[1] == "aorta" and info.provenance == {"data": ["Synapse"]}
    assert ModelInfo.parse(1).recipe is None  # the authors' files carry none


@pytest.mark.parametrize(("recipe", "names", "message"), [
    ({"name": "isic"}, None, "recipe 'isic' is not a valid recipe: it has no description"),
    ({**RECIPES["isic"].to_dict(), "input_size": "256"}, None, "input_size cannot be '256'"),
    ({**RECIPES["isic"].to_dict(), "intensity": "zscore"}, None, "unknown intensity mapping"),
    ("isic", None, "a recipe is a Recipe or its dict, got str"),
    (None, "lesion", "class names are a list of strings"),
    (None, ["background", "lesion"], "2 class names (background, lesion) for a model of 1 class"),
])
def test_what_does_not_hold_up_is_named(recipe, names, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelInfo.parse(1, recipe, names)


def test_a_model_without_class_names_keeps_none_when_its_head_grows():
    assert ModelInfo().with_classes(4).class_names is None
    assert ModelInfo(class_names=("a", "b")).with_classes(3).class_names == ("a", "b", "class 2")
