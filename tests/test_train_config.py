"""The training config: defaults are the paper's SD-Turbo recipe; bad keys and values name the key path."""

from __future__ import annotations

import pytest

from drpo.commands.train import parse_overrides
from drpo.config import ConfigError, config_hash, flatten, to_dict
from drpo.data.prompts import load_prompts
from drpo.train.config import TrainConfig, load_train_config, train_config_from_dict
from drpo.train.data import PromptSchedule, micro_seed


def test_defaults_are_the_papers_sd_turbo_recipe():
    cfg = TrainConfig()
    d = cfg.drpo
    assert (d.candidates, d.positives, d.negatives) == (24, 8, 8)
    assert d.radii == [0.02, 0.05, 0.2] and d.kernel == "laplacian" and d.aggregation == "sum"
    assert (d.eta_pos, d.eta_neg, d.eta_ref, d.eta_refneg, d.lambda_ref) == (3000, 3000, 3000, 3000, 0.2)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets) == (16, 16, ["to_q", "to_k", "to_v", "to_out.0"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip) == (1e-4, 1e-2, 1.0)


def test_yaml_round_trip_and_reward_shorthand(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: dpo\nsteps: 3\nreward: clip\noptim: {lr: 1e-5}\ndrpo: {radii: [0.1, 0.3]}\n")
    cfg = load_train_config(path, {"drpo": {"candidates": 16}})
    assert cfg.method == "dpo" and cfg.steps == 3 and cfg.optim.lr == 1e-5  # "1e-5" (a YAML string) is a number
    assert [r.name for r in cfg.reward] == ["clip"] and cfg.drpo.candidates == 16 and cfg.drpo.radii == [0.1, 0.3]
    again = train_config_from_dict(to_dict(cfg))
    assert config_hash(again) == config_hash(cfg)
    assert flatten(to_dict(cfg))["drpo.radii"] == "[0.1, 0.3]"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"drpo": {"candidatez": 3}}, r"unknown key drpo\.candidatez"),
        ({"drpo": {"radii": [0.1, "x"]}}, r"drpo\.radii\[1\]: expected a number"),
        ({"steps": "ten"}, r"steps: expected an integer"),
        ({"method": "ppo"}, r"method: 'ppo' is not one of"),
        ({"drpo": {"positives": 20, "negatives": 8}}, r"must be <= drpo\.candidates"),
        ({"reward": [{"name": "clip"}, {"name": "clip"}]}, r"duplicate reward names"),
        ({"lora": "big"}, r"lora: expected a mapping"),
    ],
)
def test_bad_config_names_the_key_path(data, message):
    with pytest.raises(ConfigError, match=message):
        train_config_from_dict(data, source="run.yaml")


def test_overrides_parse_yaml_values():
    assert parse_overrides(["drpo.candidates=16", "method=dpo", "drpo.radii=[0.1,0.2]"]) == {
        "drpo": {"candidates": 16, "radii": [0.1, 0.2]},
        "method": "dpo",
    }
    with pytest.raises(ValueError, match="KEY.PATH=VALUE"):
        parse_overrides(["steps"])


def test_an_error_the_overrides_bring_names_set_not_the_file(tmp_path):
    from drpo.config import ConfigError
    from drpo.train.config import load_train_config

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("method: drpo\nsteps: 2\n")
    bad.write_text("method: drpo\nsteps: x\n")
    with pytest.raises(ConfigError, match=r"^--set: unknown key drpo\.candidatez"):
        load_train_config(good, {"drpo": {"candidatez": 3}})
    with pytest.raises(ConfigError, match=r"bad\.yaml: steps: expected an integer"):
        load_train_config(bad, {"drpo": {"candidates": 8}})
    assert load_train_config(bad, {"steps": 4}).steps == 4  # --set may fix what the file got wrong


def test_set_naming_another_feature_map_replaces_the_block(tmp_path):
    """`--set features.name=latent` on a CLIP run: the CLIP's path must not reach the latent map."""
    from drpo.train.config import load_train_config

    run = tmp_path / "run.yaml"
    run.write_text("method: drpo\nfeatures: {name: clip, options: {path: results/world/reward_model}}\n")
    assert load_train_config(run, {"features": {"name": "latent"}}).features.options == {}
    keys = load_train_config(run, {"features": {"options": {"keys": ["image_embeds"]}}}).features
    assert keys.name == "clip" and keys.options == {"path": "results/world/reward_model", "keys": ["image_embeds"]}


def test_prompt_rows_and_schedule_are_independent_of_process_count(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"prompt": "p{i}", "tag": "t"}}\n' for i in range(10)))
    rows = load_prompts(path)
    assert rows[3] == {"prompt": "p3", "tag": "t", "prompt_id": 3}
    one = PromptSchedule(rows, 42, micro_steps_per_update=2, prompts_per_micro=2)  # 1 process, GA 2
    two = PromptSchedule(rows, 42, micro_steps_per_update=2, prompts_per_micro=2)  # 2 processes, GA 1
    for update in range(3):
        assert [one.batch(update, m) for m in range(2)] == [two.batch(update, r) for r in range(2)]
    seen = [r["prompt"] for u in range(5) for m in range(2) for r in one.batch(u, m)]
    assert sorted(seen) == sorted([f"p{i}" for i in range(10)] * 2)  # every prompt, cyclically
    assert micro_seed(42, 1, 0) != micro_seed(42, 0, 1)
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n{\"prompt\": \"a dog\", \"prompt_id\": 7}\na bird\n")  # ids: own, else the index
    assert load_prompts(txt) == [{"prompt": "a cat", "prompt_id": 0}, {"prompt": "a dog", "prompt_id": 7}, {"prompt": "a bird", "prompt_id": 2}]
    assert load_prompts(txt, 1) == [{"prompt": "a cat", "prompt_id": 0}]
    jsonl = tmp_path / "p2.jsonl"
    jsonl.write_text('{"prompt": "a cat"}\na dog\n')
    with pytest.raises(ValueError, match=r"p2\.jsonl:2: not a JSON row"):
        load_prompts(jsonl)
    with pytest.raises(FileNotFoundError, match="prompts.path"):
        load_prompts(tmp_path / "missing.txt", key="prompts.path")


def test_balanced_schedule_trains_every_tag_equally_often():
    rows = [{"prompt": f"a{i}", "tag": "big", "prompt_id": i} for i in range(9)]
    rows += [{"prompt": "b0", "tag": "small", "prompt_id": 9}, {"prompt": "b1", "tag": "small", "prompt_id": 10}]
    plain = PromptSchedule(rows, 42, micro_steps_per_update=1, prompts_per_micro=2)
    balanced = PromptSchedule(rows, 42, micro_steps_per_update=1, prompts_per_micro=2, balance="tag")
    cycle = [r for u in range(9) for r in balanced.batch(u, 0)]  # one cycle: 2 groups × 9 places
    assert len(balanced.rows) == 18
    assert sum(r["tag"] == "small" for r in cycle) == 9  # half the places, against 2 of 11 unbalanced
    assert sum(r["tag"] == "small" for u in range(9) for r in plain.batch(u, 0)) < 9
    assert {r["prompt"] for r in cycle} == {r["prompt"] for r in rows}  # nothing dropped
    small = [r["prompt"] for r in cycle if r["tag"] == "small"]
    assert sorted([small.count("b0"), small.count("b1")]) == [4, 5]  # cycled through, as evenly as fits
    again = PromptSchedule(rows, 42, micro_steps_per_update=1, prompts_per_micro=2, balance="tag")
    assert again.rows == balanced.rows  # a pure function of the seed, so resume and processes agree
    with pytest.raises(ValueError, match="prompts.balance: 'tag'.*'a cat'"):
        PromptSchedule([{"prompt": "a cat", "prompt_id": 0}], 42, 1, 1, balance="tag")
