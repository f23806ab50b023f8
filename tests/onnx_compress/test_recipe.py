"""Recipe: validation, step order, TOML in and out."""

from __future__ import annotations

import dataclasses

import pytest

from onnx_compress import DEFAULT_RECIPE, AccuracyLevel, QuantizeWeights, Recipe, RecipeError, Verify, WeightFormat
from onnx_compress.recipe import STEP_ORDER, STEP_TYPES


@pytest.mark.parametrize(
    "recipe",
    [
        DEFAULT_RECIPE,
        Recipe(
            steps=(
                QuantizeWeights(
                    block_size=32,
                    format=WeightFormat.MATMULNBITS,
                    exclude=("a|b", 'q"uote\\.'),
                    accuracy_level=AccuracyLevel.FP16,
                    min_dim=4,
                ),
            ),
            verify=Verify(enabled=False, tolerance=0.02, seed=7, batch=1, sequence=3),
        ),
        Recipe(steps=(), verify=Verify()),
        Recipe(steps=(QuantizeWeights(exclude=()),)),
    ],
)
def test_toml_round_trip(recipe: Recipe) -> None:
    text = recipe.to_toml()
    assert Recipe.from_toml(text) == recipe
    assert Recipe.from_toml(text).to_toml() == text


def test_recipe_is_frozen_and_steps_become_a_tuple() -> None:
    r = Recipe(steps=[QuantizeWeights()])  # type: ignore[arg-type]
    assert isinstance(r.steps, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.verify = Verify()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(block_size=48), "block_size must be 0 (per output channel) or a power of two >= 16, got 48"),
        (dict(block_size=8), "got 8"),
        (dict(min_dim=0), "min_dim must be >= 1, got 0"),
        (dict(exclude=("(",)), "exclude pattern '(' is not a valid regular expression"),
    ],
)
def test_step_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QuantizeWeights(**kwargs)


def test_verify_validation() -> None:
    with pytest.raises(RecipeError, match="tolerance must be in"):
        Verify(tolerance=1.0)
    with pytest.raises(RecipeError, match="batch and sequence must be >= 1"):
        Verify(sequence=0)


def test_each_step_at_most_once() -> None:
    with pytest.raises(RecipeError, match="step 'quantize' appears twice"):
        Recipe(steps=(QuantizeWeights(), QuantizeWeights(block_size=32)))


def test_every_step_type_has_an_order_rank() -> None:
    assert set(STEP_ORDER) == set(STEP_TYPES.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[steps]]\nkind = 'prune'\n",
            "steps[0] has unknown kind 'prune'; known: sparsify, awq, smooth, fuse_attention, quantize",
        ),
        ("[[steps]]\nscheme = 'int8'\n", "steps[0] needs a 'kind'"),
        (
            "[[steps]]\nkind = 'quantize'\nscheme = 'int3'\n",
            "steps[0] (quantize).scheme: got 'int3'; supported: 'int8'",
        ),
        ("[[steps]]\nkind = 'quantize'\nblock = 32\n", "unknown keys ['block']"),
        ("[[steps]]\nkind = 'quantize'\nblock_size = '32'\n", "block_size: expected an integer, got '32'"),
        ("[[steps]]\nkind = 'quantize'\nblock_size = 24\n", "power of two >= 16, got 24"),
        ("[[steps]]\nkind = 'quantize'\nexclude = 'lm_head'\n", "exclude: expected an array"),
        ("[verify]\nenabled = 1\n", "[verify].enabled: expected true or false, got 1"),
        ("[verify]\ntolerance = 2\n", "tolerance must be in (0, 1), got 2.0"),
        ("[extra]\n", "unknown top-level keys ['extra']"),
        ("steps = 3\n", "'steps' must be an array of tables"),
        ("[[steps]\n", "not valid TOML"),
    ],
)
def test_bad_toml(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.from_toml(text, "r.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("r.toml")


def test_load_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match="cannot read recipe"):
        Recipe.load(tmp_path / "nope.toml")


def test_verify_tolerance_defaults_per_scheme() -> None:
    assert DEFAULT_RECIPE.verify_tolerance == QuantizeWeights().verify_tolerance
    assert Recipe(steps=()).verify_tolerance == 1e-4
    assert Recipe(verify=Verify(tolerance=0.2)).verify_tolerance == 0.2
