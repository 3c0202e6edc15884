"""Tests for tourbillon.config: validation messages, round trips and overrides.

Every rejected value must raise ConfigError whose message names the field and
what is allowed, so a user who mistypes ``--set`` sees how to fix it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tourbillon.config import (
    ACTIVATIONS,
    VARIANTS,
    Config,
    field_names,
    get_variant,
    parse_overrides,
    parse_value,
    resolve,
)
from tourbillon.config import _CHOICES as CHOICES
from tourbillon.errors import ConfigError

CONV = dict(arch="conv", channels=(1, 3, 4), input_size=(12, 12))


def assert_config_error(fragments: list[str], **fields: Any) -> None:
    """``Config(**fields)`` raises ConfigError mentioning every fragment."""
    with pytest.raises(ConfigError) as info:
        Config(**fields)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


# -- one bad value per option field ----------------------------------------------


@pytest.mark.parametrize("name", sorted(CHOICES), ids=str)
def test_unknown_choice_names_field_and_allowed_values(name: str) -> None:
    assert_config_error([name, "not-a-choice", *CHOICES[name]],
                        **{name: "not-a-choice"})


def test_match_is_a_decoder_activation_only() -> None:
    assert_config_error(["encoder_activation", "'match'", *ACTIVATIONS],
                        encoder_activation="match")
    assert Config(decoder_activation="match").decoder_activation == "match"


# -- numeric ranges, circulation indices and combinations ----------------------------

INVALID: dict[str, tuple[dict[str, Any], list[str]]] = {
    "circulations-zero": ({"circulations": 0}, ["circulations", ">= 1"]),
    "encoder_target-beyond": (
        {"encoder_target": 2}, ["encoder_target=2", "circulations=2", "0..1"]),
    "encoder_output-negative": ({"encoder_output": -1}, ["encoder_output", "0..1"]),
    "decoder_output-beyond": (
        {"circulations": 3, "decoder_output": 3}, ["decoder_output=3", "0..2"]),
    "decoder_target-beyond": (
        {"decoder_target": 2}, ["decoder_target=2", "0..1", "'input'"]),
    "decoder_target-word": ({"decoder_target": "first"}, ["decoder_target", "'input'"]),
    "decoder_target-bool": ({"decoder_target": True}, ["decoder_target", "'input'"]),
    "feed_from-beyond": ({"feed_from": 2}, ["feed_from=2", "0..1"]),
    "regression-one": ({"regression": 1.0}, ["regression", "[0, 1)"]),
    "regression-negative": ({"regression": -0.25}, ["regression", "[0, 1)"]),
    "regression-nan": ({"regression": float("nan")}, ["regression", "[0, 1)"]),
    "momentum-one": ({"momentum": 1.0}, ["momentum", "[0, 1)"]),
    "lr-zero": ({"lr": 0.0}, ["lr", "> 0"]),
    "lr-text": ({"lr": "fast"}, ["lr", "number"]),
    "lr-bool": ({"lr": True}, ["lr", "number"]),
    "lr_decay-text": ({"lr_decay": "yes"}, ["lr_decay", "true or false"]),
    "lr_decay-adam": (
        {"lr_decay": True, "optimizer": "adam"}, ["lr_decay", "optimizer='sgd'"]),
    "batch_size-zero": ({"batch_size": 0}, ["batch_size", ">= 1"]),
    "batch_size-fraction": ({"batch_size": 1.5}, ["batch_size", "integer"]),
    "epochs-negative": ({"epochs": -1}, ["epochs", ">= 0"]),
    "head_epochs-negative": ({"head_epochs": -1}, ["head_epochs", ">= 0"]),
    "classes-negative": ({"classes": -1}, ["classes", ">= 0"]),
    "sizes-zero-width": ({"sizes": (784, 0)}, ["sizes", "positive"]),
    "sizes-empty": ({"sizes": ()}, ["sizes", "positive"]),
    "sizes-int": ({"sizes": 784}, ["sizes", "list of ints"]),
    "channels-zero-width": ({**CONV, "channels": (1, 0)}, ["channels", "positive"]),
    "input_size-zero": ({**CONV, "input_size": (0, 12)}, ["input_size", "positive"]),
    "input_size-triple": ({"input_size": (1, 2, 3)}, ["input_size", "(h, w) pair"]),
    "kernel_sizes-zero": ({**CONV, "kernel_sizes": 0}, ["kernel_sizes", ">= 1"]),
    "strides-zero": ({**CONV, "strides": [1, 0]}, ["strides", ">= 1"]),
    "paddings-negative": ({**CONV, "paddings": -1}, ["paddings", ">= 0"]),
    "paddings-wrong-length": (
        {**CONV, "paddings": [1, 1, 1]}, ["paddings", "3 entries", "2 block"]),
    "kernel_sizes-bad-pair": ({**CONV, "kernel_sizes": [(3, 3, 3), 3]},
                              ["kernel_sizes", "(h, w) pair"]),
    "feedback-input_graph-keep": (
        {"feedback": "random", "input_graph": "keep"},
        ["feedback='random'", "input_graph='detach'"]),
    "feedback-no-head": (
        {"feedback": "random", "input_graph": "detach", "classes": 0},
        ["feedback='random'", "classes > 0"]),
    "head_graph-keep-after": (
        {"head_graph": "keep", "head": "after"}, ["head_graph='keep'", "head='joint'"]),
    "name-not-text": ({"name": 3}, ["name", "string"]),
    "update-explicit-conv": (
        {**CONV, "update": "explicit", "optimizer": "sgd", "head": "after",
         "input_graph": "detach"}, ["update='explicit'", "arch='linear'"]),
    "update-explicit-adam": (
        {"update": "explicit", "head": "after", "input_graph": "detach"},
        ["update='explicit'", "optimizer='sgd'", "'auto' or 'autograd'"]),
    "update-explicit-code-graph": (
        {"update": "explicit", "optimizer": "sgd", "head": "after",
         "input_graph": "detach", "code_graph": "keep"},
        ["update='explicit'", "code_graph='detach'"]),
    "update-explicit-input-graph": (
        {"update": "explicit", "optimizer": "sgd", "head": "after"},
        ["update='explicit'", "input_graph='detach'"]),
    "update-explicit-joint-head": (
        {"update": "explicit", "optimizer": "sgd", "input_graph": "detach"},
        ["update='explicit'", "head='after' or classes=0"]),
}


@pytest.mark.parametrize("fields, fragments", INVALID.values(), ids=INVALID.keys())
def test_invalid_value_names_field_and_allowed_values(
    fields: dict[str, Any], fragments: list[str]
) -> None:
    assert_config_error(fragments, **fields)


@pytest.mark.parametrize("lr", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_lr_is_rejected(lr: float) -> None:
    assert_config_error(["lr"], lr=lr)


def test_valid_edge_values_are_accepted() -> None:
    c = Config(circulations=3, encoder_target=2, encoder_output=0, decoder_target=2,
               decoder_output=0, feed_from=2, regression=0.0, momentum=0.0)
    assert c.circulations == 3
    assert Config(decoder_target="1").decoder_target == 1
    assert Config(batch_size=64.0).batch_size == 64


@pytest.mark.parametrize("name, explicit", [
    ("authors", True), ("tuned", True), ("hinton88", True), ("reference", False),
    ("feedback", False), ("bp", False)])
def test_auto_update_is_explicit_where_the_variant_allows(name: str,
                                                          explicit: bool) -> None:
    config = resolve(name)
    assert config.update == "auto"
    assert config.explicit_update is explicit
    assert (not config.explicit_update_needs()) is explicit
    assert resolve(name, {"update": "autograd"}).explicit_update is False


def test_one_block_may_keep_its_input_graph_under_explicit() -> None:
    # nothing lies below block 0, so input_graph cannot leak there
    config = Config(sizes=(784, 32), optimizer="sgd", head="after", input_graph="keep",
                    update="explicit")
    assert config.explicit_update


# -- unknown fields ------------------------------------------------------------------


def test_replace_rejects_unknown_field_and_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        Config().replace(learning_rate=0.1)
    message = str(info.value)
    assert "learning_rate" in message
    assert all(name in message for name in field_names())


def test_replace_validates_the_new_value() -> None:
    with pytest.raises(ConfigError, match="regression"):
        Config().replace(regression=2.0)
    assert Config().replace(lr=0.5).lr == 0.5


def test_from_dict_rejects_unknown_field() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        Config.from_dict({**Config().to_dict(), "bogus": 1})


def test_parse_overrides_rejects_unknown_field_and_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides(["lr=0.1", "hidden=128"])
    message = str(info.value)
    assert "hidden" in message and "sizes" in message and "lr" in message


@pytest.mark.parametrize("item", ["lr0.1", "", "sizes"], ids=["no-equals", "empty",
                                                                  "bare-name"])
def test_parse_overrides_rejects_bad_syntax(item: str) -> None:
    with pytest.raises(ConfigError, match=r"--set expects field=value"):
        parse_overrides([item])


# -- parsing --set values -------------------------------------------------------

PARSE_CASES: dict[str, tuple[str, Any]] = {
    "int": ("5", 5),
    "negative-int": ("-1", -1),
    "float": ("0.01", 0.01),
    "exponent": ("1e-3", 1e-3),
    "true": ("true", True),
    "false": ("false", False),
    "json-list": ("[784, 256]", [784, 256]),
    "nested-list": ("[[5, 5], 3]", [[5, 5], 3]),
    "comma-list": ("784,256,64", [784, 256, 64]),
    "comma-list-spaces": ("784, 256", [784, 256]),
    "mixed-comma-list": ("5,tanh", [5, "tanh"]),
    "bare-word": ("tanh", "tanh"),
    "input": ("input", "input"),
    "quoted-digits": ('"0"', "0"),
    "hyphenated-word": ("mnist-sample", "mnist-sample"),
}


@pytest.mark.parametrize("text, expected", PARSE_CASES.values(), ids=PARSE_CASES.keys())
def test_parse_value(text: str, expected: Any) -> None:
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_parse_overrides_splits_on_first_equals_and_strips() -> None:
    parsed = parse_overrides([" lr = 0.1 ", "sizes=784,128", "dataset=a=b"])
    assert parsed == {"lr": 0.1, "sizes": [784, 128], "dataset": "a=b"}


# -- variants, resolve and round trips ------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS), ids=str)
def test_to_dict_from_dict_round_trip(name: str) -> None:
    config = get_variant(name).config()
    data = config.to_dict()
    assert list(data) == field_names()
    restored = Config.from_dict(json.loads(json.dumps(data)))
    assert restored == config
    assert restored.to_dict() == data
    assert config.diff(restored) == {}


def test_round_trip_of_conv_geometry_pairs() -> None:
    config = Config(**CONV, kernel_sizes=[(3, 5), 3], strides=(1, 2), paddings=1)
    restored = Config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.per_block("kernel_sizes") == [(3, 5), (3, 3)]
    assert restored.per_block("strides") == [(1, 1), (2, 2)]
    assert restored.per_block("paddings") == [(1, 1), (1, 1)]


def test_resolve_applies_overrides_on_top_of_the_variant() -> None:
    overrides = parse_overrides(["lr=0.05", "sizes=784,128", "epochs=2"])
    config = resolve("authors", overrides)
    base = get_variant("authors").config()
    assert config.name == "authors"
    assert (config.lr, config.sizes, config.epochs) == (0.05, (784, 128), 2)
    assert config.diff(base) == {"lr": (0.05, 0.01), "sizes": ([784, 128], [784, 256]),
                                 "epochs": (2, 10)}


def test_resolve_without_overrides_is_the_variant() -> None:
    assert resolve() == Config(name="reference")
    for name, variant in VARIANTS.items():
        assert resolve(name) == variant.config()


def test_resolve_validates_overrides() -> None:
    with pytest.raises(ConfigError, match="encoder_output"):
        resolve("authors", {"encoder_output": 5})


def test_resolve_rejects_unknown_override_with_config_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        resolve("authors", {"bogus": 1})


def test_resolve_accepts_a_name_override() -> None:
    assert resolve("authors", {"name": "run1"}).name == "run1"


@pytest.mark.parametrize("call", [get_variant, resolve], ids=["get_variant", "resolve"])
def test_unknown_variant_lists_known_names(call) -> None:
    with pytest.raises(ConfigError) as info:
        call("tourbillion")
    message = str(info.value)
    assert "tourbillion" in message
    assert all(name in message for name in VARIANTS)
