"""The training methods, in one place: what each needs and where its class lives.

Everything that asks "which methods are there" or "does this method need X" reads this table: the
TrainConfig's `method` choices and the sections it logs as parameters, the trainer (what to build,
where prompts come from), `drpo train --method`, `drpo fetch` (which runs need a feature map), the
workflow (which runs train on a preference dataset) and the config schema's `method` enum. No heavy
imports: a method's class is imported only when a run builds it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: str  # "module:Class", imported on first use
    sections: tuple[str, ...]  # the TrainConfig sections it reads (the others are other methods' settings)
    reward: bool = True  # scores its candidates with the run's reward
    reward_gradient: bool = False  # differentiates through the reward (built in fp32)
    features: bool = False  # a frozen feature map (the drift's space)
    dataset: bool = False  # trains on a preference dataset's pairs (their prompts) instead of a prompt file
    label: str = ""

    def load(self) -> type:
        module, _, name = self.cls.partition(":")
        return getattr(importlib.import_module(module), name)


METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("drpo", "drpo.train.drpo_method:DrPO", ("drpo",), features=True, label="DrPO"),
    MethodSpec("drpo_offline", "drpo.train.drpo_method:OfflineDrPO", ("drpo", "offline"), reward=False, features=True,
               dataset=True, label="DrPO offline"),
    MethodSpec("draft", "drpo.train.baselines:DRaFT", ("draft",), reward_gradient=True, label="DRaFT"),
    MethodSpec("dpo", "drpo.train.baselines:DPOOneStep", ("dpo",), label="DPO 1step"),
    MethodSpec("grpo", "drpo.train.baselines:GRPOOneStep", ("grpo",), label="GRPO 1step"),
    MethodSpec("pso", "drpo.train.baselines:PSOOneStep", ("pso",), label="PSO"),
    MethodSpec("vggflow", "drpo.train.baselines:VGGFlowOneStep", ("vggflow",), reward_gradient=True, label="VGGFlow"),
)}
NAMES: tuple[str, ...] = tuple(METHODS)


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r} (one of {', '.join(NAMES)})")
    return METHODS[name]
