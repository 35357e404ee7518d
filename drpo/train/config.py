"""The training config: one dataclass tree for every method (METHOD.md §2.3, §2.8, §4, §7).

Defaults are the paper's SD-Turbo DrPO recipe; a YAML file overrides what it names. Each method
reads its own block (`drpo`, `offline`, `draft`, `dpo`, `grpo`, `pso`, `vggflow`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drpo.config import ConfigError, from_dict, load_yaml
from drpo.train.registry import METHODS as _REGISTRY
from drpo.train.registry import NAMES as METHODS

Method = Literal[METHODS]  # the registry's names (drpo.train.registry)
# the config sections each method reads (the others are another method's settings)
METHOD_SECTIONS: dict[str, tuple[str, ...]] = {name: spec.sections for name, spec in _REGISTRY.items()}


def own_params(cfg_dict: dict) -> dict:
    """A TrainConfig as a dict without the other methods' sections (what a run logs as params)."""
    mine = set(METHOD_SECTIONS[cfg_dict["method"]])
    others = {s for sections in METHOD_SECTIONS.values() for s in sections} - mine
    return {k: v for k, v in cfg_dict.items() if k not in others}


@dataclass
class ModelConfig:
    path: str = "stabilityai/sd-turbo"  # local folder or Hugging Face id (offline cache only)
    family: Literal["sd-turbo", "sdxl-turbo"] | None = None  # None: read from model_index.json
    resolution: int | None = None  # None: the model's native size
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"  # auto: cuda if available, else cpu
    timestep: int = 999  # the one step's UNet timestep; another value takes the general projection (§2.1)


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: int = 16
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0


@dataclass
class PromptConfig:
    path: str = ""  # JSONL (prompt, prompt_id, metadata...) or plain text, one prompt a line
    shuffle_seed: int = 42
    max_prompts: int | None = None
    balance: str | None = None  # a metadata key (GenEval: "tag") whose values are trained equally often


@dataclass
class RewardSpec:
    name: str = "pickscore"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureConfig:
    name: str = "latent_mae"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    grad_clip: float = 1.0
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = 0


@dataclass
class CheckpointConfig:
    every: int = 100
    total_limit: int | None = 3


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///results/mlflow.db"
    experiment: str = "drpo"
    run_name: str | None = None
    log_every: int = 1
    sample_grid_every: int = 100
    sample_prompts: int = 4
    enabled: bool = True  # False: no MLflow; metrics still go to <output_dir>/metrics.jsonl
    system_metrics: float = 10.0  # seconds between CPU/GPU/memory samples (MLflow's system/*); 0: none
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class DrPOConfig:
    candidates: int = 24  # K
    positives: int = 8  # P (top of the ranking)
    negatives: int = 8  # M (bottom of the ranking)
    radii: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.2])
    ref_radii: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.2])
    kernel: Literal["laplacian", "exponential", "rbf", "cosine"] = "laplacian"
    eta_pos: float = 3000.0
    eta_neg: float = 3000.0
    eta_ref: float = 3000.0
    eta_refneg: float = 3000.0
    lambda_ref: float = 0.2
    aggregation: Literal["sum", "mean"] = "sum"
    # Binary (pass/fail) rewards: up to this many rounds of K no-grad candidates until P passing
    # and M failing samples are found (§2.6); 0 disables the rollout loop.
    rollout_rounds: int = 4
    binary_reward: bool = False
    ref_l2_weight: float = 0.0  # optional MSE to the reference (§2.4, the "perceptual loss" row of §6.5), off by default
    ref_l2_space: Literal["latent", "features"] = "latent"  # that MSE on latents or on the drift's features


@dataclass
class OfflineConfig:
    mode: Literal["anchors", "ranked"] = "anchors"  # §2.5 `offline` / `offline_distance`
    dataset: str = ""  # pairs.jsonl: {prompt, chosen, rejected}, paths relative to its folder
    score: Literal["margin", "separate_zscore"] = "margin"
    distance: Literal["mean", "min"] = "mean"
    top_fraction: float = 0.5
    use_data_anchors: bool = False


@dataclass
class DraftConfig:
    candidates: int = 24
    chunk: int = 1  # candidates per backward (1 = stream one at a time, as in the paper's timing)
    ref_l2_weight: float = 0.0
    std_weight: float = 0.0


@dataclass
class DPOConfig:
    candidates: int = 24
    chosen: int = 8
    rejected: int = 8
    beta: float = 30.0
    reference_free: bool = False


@dataclass
class GRPOConfig:
    candidates: int = 24
    sigma: float = 0.3
    anchors: int = 4
    tau: float = 1.0
    p_norm: float = 0.8
    adv_clip: float = 5.0
    ratio_clip: float = 0.2
    ref_l2_weight: float = 0.02
    zscore: bool = False


@dataclass
class PSOConfig:
    candidates: int = 24
    beta: float = 50.0
    action_std: float = 0.05
    ratio_clip: float = 0.1


@dataclass
class VGGFlowConfig:
    candidates: int = 8
    scale: float = 1000.0
    quantile: float = 0.8
    tau_init: float = 1.0


@dataclass
class TrainConfig:
    method: Method = "drpo"
    seed: int = 42
    output_dir: str = "results/runs/drpo"
    steps: int = 1000  # optimizer updates
    grad_accum: int = 8  # micro-steps per update (per process)
    prompts_per_micro_step: int = 1  # several prompts batched along B where memory allows
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False  # recompute UNet/VAE activations in backward (memory for time)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    reward: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    features: FeatureConfig = field(default_factory=FeatureConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    drpo: DrPOConfig = field(default_factory=DrPOConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    draft: DraftConfig = field(default_factory=DraftConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    pso: PSOConfig = field(default_factory=PSOConfig)
    vggflow: VGGFlowConfig = field(default_factory=VGGFlowConfig)

    def __post_init__(self) -> None:
        d = self.drpo
        if d.positives + d.negatives > d.candidates:
            raise ValueError(
                f"drpo.positives ({d.positives}) + drpo.negatives ({d.negatives}) must be <= "
                f"drpo.candidates ({d.candidates}): top and bottom sets are disjoint"
            )
        if d.positives < 1 or d.negatives < 1:
            raise ValueError("drpo.positives and drpo.negatives must be >= 1")
        for name in ("steps", "grad_accum", "prompts_per_micro_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.draft.std_weight > 0 and self.draft.chunk < self.draft.candidates * self.prompts_per_micro_step:
            raise ValueError(
                f"draft.std_weight > 0 needs every candidate's reward in one backward: set draft.chunk >= "
                f"draft.candidates × prompts_per_micro_step ({self.draft.candidates * self.prompts_per_micro_step}), got {self.draft.chunk}"
            )
        if self.dpo.chosen + self.dpo.rejected > self.dpo.candidates:
            raise ValueError("dpo.chosen + dpo.rejected must be <= dpo.candidates")


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a training YAML (reward may be a name, a spec, or a list of specs); `overrides` (from
    --set) merge in as a workflow run's do: `features.name=latent` replaces the whole features block."""
    from drpo.config import merge_overrides

    data = load_yaml(path)
    if not data:  # not "the defaults": an empty file is far more often a mistake than a choice
        raise ConfigError(f"{path} is empty; a training config names at least model, prompts and reward "
                          "(every key and its default: drpo train --help)")
    if not overrides:
        return train_config_from_dict(data, source=str(path))
    try:
        train_config_from_dict(data, source=str(path))
        file_ok = True
    except ConfigError:
        file_ok = False  # maybe what --set is there to fix
    # an error that only the overrides bring is theirs: it names --set, not the file
    return train_config_from_dict(merge_overrides(data, overrides), source="--set" if file_ok else str(path))


def train_config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    data = dict(data)
    reward = data.get("reward")
    if isinstance(reward, str):
        data["reward"] = [{"name": reward}]
    elif isinstance(reward, dict):
        data["reward"] = [reward]
    cfg = from_dict(TrainConfig, data, source=source)
    names = [r.name for r in cfg.reward]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: reward: duplicate reward names {names}")
    return cfg
