"""One registry of training methods (drpo.train.registry): every list of methods is read from it."""

from __future__ import annotations

import typing

import pytest

from drpo import workflow as wf
from drpo.train import registry
from drpo.train.base import Method
from drpo.train.config import METHOD_SECTIONS, TrainConfig, train_config_from_dict


def test_every_method_is_one_class_that_names_itself_and_the_config_offers_exactly_these():
    assert registry.NAMES == ("drpo", "drpo_offline", "draft", "dpo", "grpo", "pso", "vggflow")
    for name, spec in registry.METHODS.items():
        cls = spec.load()
        assert issubclass(cls, Method) and cls.name == name
        assert set(spec.sections) <= {f.name for f in __import__("dataclasses").fields(TrainConfig)}
    assert typing.get_args(typing.get_type_hints(TrainConfig)["method"]) == registry.NAMES
    assert METHOD_SECTIONS == {n: s.sections for n, s in registry.METHODS.items()}
    # what each declares is what the paper's methods need (METHOD.md §2, §4)
    assert {n for n, s in registry.METHODS.items() if s.features} == {"drpo", "drpo_offline"}
    assert {n for n, s in registry.METHODS.items() if s.reward_gradient} == {"draft", "vggflow"}
    assert {n for n, s in registry.METHODS.items() if not s.reward} == {n for n, s in registry.METHODS.items() if s.dataset} == {"drpo_offline"}


def test_the_schema_and_the_cli_take_the_registrys_methods():
    import yaml

    from drpo.cli import build_parser

    schema = yaml.safe_load(wf.SCHEMA.read_text())
    wf._method_choices(schema)
    run = schema["properties"]["training"]["properties"]["runs"]["additionalProperties"]["properties"]
    assert run["method"]["enum"] == list(registry.NAMES)
    config = wf.validate_config(yaml.safe_load((wf.SCHEMA.parents[2] / "config" / "config.yaml").read_text()))
    config["training"]["runs"]["drpo"]["method"] = "drpoo"
    with pytest.raises(wf.ConfigError, match=r"training\.runs\.drpo\.method: 'drpoo' is not one of \['drpo', 'drpo_offline'"):
        wf.validate_config(config)
    train = build_parser("train")._subparsers._group_actions[0].choices["train"]
    (method,) = [a for a in train._actions if "--method" in a.option_strings]
    assert tuple(method.choices) == registry.NAMES
    with pytest.raises(Exception, match="method"):
        train_config_from_dict({"method": "drpoo"})


def test_a_method_without_state_refuses_a_checkpoints_state():
    from drpo.train.baselines import VGGFlowOneStep

    vgg = VGGFlowOneStep.__new__(VGGFlowOneStep)
    vgg.tau = 1.0
    vgg.load_state_dict({"tau": 0.25})
    assert vgg.state_dict() == {"tau": 0.25}
    plain = registry.METHODS["dpo"].load().__new__(registry.METHODS["dpo"].load())
    assert plain.state_dict() == {}
    plain.load_state_dict({})
    with pytest.raises(ValueError, match="method dpo keeps no state, but the checkpoint holds \\['tau'\\]"):
        plain.load_state_dict({"tau": 1.0})
