"""The paper's published numbers (METHOD.md §6) as data, in the paper's display units.

`PAPER[table][(row key, test set, metric)]` is the printed number (PS = PickScore×100, IR =
ImageReward×10, AES raw, CLIP/HPSv2 ×100, GenEval and preference in %, seconds). Row keys, their
printed labels and the aliases a results file may use for them are in `ROWS` and `ALIASES`;
`canonical_row`/`canonical_test_set` map a results file's names onto them. `TABLES` names the
builder (drpo.eval.tables.BUILDERS) that draws each table. The Qwen3-VL shares were
read off bar charts (±0.5) and the training curves are approximate readings (§6.7, §6.8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    key: str
    label: str
    steps: int | None = None  # main tables only
    reward_grad: str | None = None  # "Yes" | "No" | "–"


SECTIONS = {
    "sd_turbo_main": "METHOD.md §6.2", "sdxl_turbo_main": "METHOD.md §6.1", "hpsv3_efficiency": "METHOD.md §6.3",
    "geneval": "METHOD.md §6.4", "reference_objective": "METHOD.md §6.5", "ablation_k": "METHOD.md §6.6",
    "ablation_feature_map": "METHOD.md §6.6", "ablation_kernel": "METHOD.md §6.6", "ablation_eta": "METHOD.md §6.6",
    "qwen3vl_preference": "METHOD.md §6.7 (read from bar charts, ±0.5)", "training_curves": "METHOD.md §6.8 (approximate)",
}

# The paper's tables and the builder of drpo.eval.tables that draws each: a config's table names
# both (`builder:`, and `paper:` for the one it is compared with), never by the table's own name.
TABLES = {
    "sd_turbo_main": "main", "sdxl_turbo_main": "main", "hpsv3_efficiency": "timing", "geneval": "geneval",
    "reference_objective": "reference", "ablation_k": "ablation", "ablation_feature_map": "ablation",
    "ablation_kernel": "ablation", "ablation_eta": "ablation", "qwen3vl_preference": "preference",
}

TEST_SETS = {"pickapic_v2": "Pick-a-Pic v2", "parti": "Parti-Prompts", "geneval": "GenEval"}
MAIN_METRICS = ("pickscore", "aesthetic", "imagereward")

ROWS: dict[str, list[PaperRow]] = {}
PAPER: dict[str, dict[tuple[str, str, str], float | str]] = {}


def _main(table: str, rows: list[tuple[str, str, int, str, tuple[float, ...]]]) -> None:
    ROWS[table] = [PaperRow(k, label, steps, grad) for k, label, steps, grad, _ in rows]
    PAPER[table] = {}
    for key, _, _, _, vals in rows:
        for (ts, m), v in zip([(t, m) for t in ("pickapic_v2", "parti") for m in MAIN_METRICS], vals):
            PAPER[table][(key, ts, m)] = v


_main("sdxl_turbo_main", [
    ("sdxl", "SDXL base", 50, "–", (22.15, 6.104, 6.85, 22.64, 5.761, 7.24)),
    ("sdxl_dpo", "SDXL-DPO", 50, "–", (22.57, 6.076, 9.38, 22.95, 5.811, 10.66)),
    ("base", "SDXL-Turbo base", 1, "–", (22.45, 6.059, 9.36, 22.77, 5.693, 9.13)),
    ("draft", "DRaFT", 1, "Yes", (24.45, 6.712, 12.70, 24.34, 6.485, 12.66)),
    ("vggflow", "VGGFlow", 1, "Yes", (24.27, 6.490, 12.19, 23.98, 6.200, 11.40)),
    ("dpo", "DPO 1step", 1, "No", (22.77, 6.227, 10.44, 22.85, 6.019, 11.25)),
    ("pso", "PSO", 1, "No", (22.56, 6.092, 8.97, 22.87, 5.744, 9.17)),
    ("grpo", "GRPO 1step", 1, "No", (22.50, 6.077, 9.57, 22.80, 5.710, 9.27)),
    ("drpo", "DrPO", 1, "No", (23.66, 6.717, 12.46, 23.71, 6.665, 12.60)),
])
_main("sd_turbo_main", [
    ("sd15", "SD1.5", 50, "–", (20.79, 5.455, 1.22, 21.49, 5.358, 2.25)),
    ("lcm_sd15", "LCM-SD1.5", 4, "–", (20.50, 5.497, -3.08, 21.15, 5.396, -1.94)),
    ("sd21", "SD2.1", 50, "–", (21.09, 5.645, 2.49, 21.77, 5.547, 3.97)),
    ("base", "SD-Turbo base", 1, "–", (21.88, 6.054, 5.75, 22.29, 5.758, 5.37)),
    ("draft", "DRaFT", 1, "Yes", (24.69, 6.820, 9.63, 23.07, 6.516, 7.72)),
    ("vggflow", "VGGFlow", 1, "Yes", (23.73, 6.378, 7.74, 22.99, 6.027, 6.50)),
    ("dpo", "DPO 1step", 1, "No", (22.02, 6.080, 5.95, 22.39, 5.793, 5.21)),
    ("pso", "PSO", 1, "No", (21.88, 6.059, 5.80, 22.29, 5.763, 5.42)),
    ("grpo", "GRPO 1step", 1, "No", (21.98, 6.077, 6.08, 22.35, 5.779, 5.65)),
    ("drpo", "DrPO", 1, "No", (23.49, 6.485, 9.54, 22.99, 6.284, 7.46)),
])

# §6.3: rows are the methods; metrics are the table's lines.
ROWS["hpsv3_efficiency"] = [PaperRow("draft", "DRaFT", reward_grad="Yes"), PaperRow("drpo", "DrPO", reward_grad="No")]
PAPER["hpsv3_efficiency"] = {
    ("draft", "", "effective_batch"): 192, ("drpo", "", "effective_batch"): 192,
    ("draft", "", "update_s"): 21.62, ("drpo", "", "update_s"): 6.17,
    ("draft", "", "speedup"): 1.00, ("drpo", "", "speedup"): 3.51,
    ("draft", "", "backward_s"): 9.99, ("drpo", "", "backward_s"): 0.34,
}

# §6.4: per-task accuracy in %, metric "geneval:<tag>" on test set "geneval".
ROWS["geneval"] = [PaperRow("base", "SD-Turbo"), PaperRow("drpo", "+DrPO")]
_GENEVAL = {
    "single_object": (98.8, 100.0), "two_object": (46.5, 55.6), "counting": (33.8, 42.5),
    "colors": (83.8, 87.2), "position": (8.0, 13.0), "color_attr": (9.0, 13.0),
}
PAPER["geneval"] = {(k, "geneval", f"geneval:{t}"): v for t, vals in _GENEVAL.items() for k, v in zip(("base", "drpo"), vals)}

ROWS["reference_objective"] = [
    PaperRow("no_reference", "No reference"), PaperRow("perceptual", "Perceptual loss"), PaperRow("ref_drift", "Ref. drift loss"),
]
_REF = {"no_reference": (23.55, 25.88, 6.603, 34.85), "perceptual": (23.42, 25.98, 6.455, 34.90), "ref_drift": (23.49, 26.22, 6.485, 35.07)}
PAPER["reference_objective"] = {
    (k, "pickapic_v2", m): v for k, vals in _REF.items() for m, v in zip(("pickscore", "clip", "aesthetic", "hpsv2"), vals)
}

_BASE = PaperRow("base", "SD-Turbo base")
_ABLATIONS = {
    "ablation_k": [("16", "K = 16", 23.24, 6.409), ("24", "K = 24", 23.53, 6.552), ("32", "K = 32", 23.57, 6.599)],
    "ablation_feature_map": [
        ("latent_mae_1", "Latent-MAE 1", 23.55, 6.513), ("latent_mae_2", "Latent-MAE 2", 23.50, 6.526),
        ("latent_mae_3", "Latent-MAE 3", 23.48, 6.506), ("latent", "Latent (raw)", 20.52, 4.543),
        ("dinov2", "VAE decode + DINOv2", 22.28, 6.252),
    ],
    "ablation_kernel": [
        ("cosine", "Cosine", 23.63, 6.509), ("rbf", "RBF", 23.50, 6.590),
        ("exponential", "Exponential", 23.53, 6.594), ("laplacian", "Laplacian", 23.51, 6.515),
    ],
    "ablation_eta": [("1000", "η = 1000", 23.51, 6.510), ("3000", "η = 3000", 23.53, 6.542),
                     ("5000", "η = 5000", 23.51, 6.485), ("10000", "η = 10000", 23.46, 6.444)],
}
for _t, _rows in _ABLATIONS.items():
    ROWS[_t] = [_BASE] + [PaperRow(k, label) for k, label, _, _ in _rows]
    PAPER[_t] = {("base", "pickapic_v2", "pickscore"): 21.88, ("base", "pickapic_v2", "aesthetic"): 6.054}
    for k, _, ps, aes in _rows:
        PAPER[_t][(k, "pickapic_v2", "pickscore")] = ps
        PAPER[_t][(k, "pickapic_v2", "aesthetic")] = aes

# §6.7: DrPO's preference share in % against each opponent (row = the opponent).
ROWS["qwen3vl_preference"] = [PaperRow("base", "SDXL-Turbo"), PaperRow("dpo", "DPO"), PaperRow("grpo", "GRPO"),
                              PaperRow("draft", "DRaFT"), PaperRow("vggflow", "VGGFlow")]
_PREF = {"base": (69.8, 71.4), "dpo": (78.7, 78.4), "grpo": (69.6, 71.6), "draft": (54.5, 62.4), "vggflow": (55.9, 66.9)}
PAPER["qwen3vl_preference"] = {(k, ts, "preference"): v for k, vals in _PREF.items() for ts, v in zip(("pickapic_v2", "parti"), vals)}

# §6.8: SD-Turbo PickScore (×100) vs update step, approximate readings of the figure.
PAPER_CURVES: dict[str, list[tuple[int, float]]] = {
    "drpo": [(0, 21.88), (100, 22.55), (300, 23.0), (700, 23.45), (1000, 23.49)],
    "draft": [(0, 21.88), (1000, 24.7)],
    "dpo": [(0, 21.88), (1000, 22.05)],
    "grpo": [(0, 21.88), (1000, 21.98)],
    "pso": [(0, 21.88), (1000, 21.88)],
}

# Names a results file may use (normalised: lower case, letters and digits only) → row key.
_COMMON = {
    "drpo": "drpo", "ours": "drpo", "draft": "draft", "draftk": "draft", "vggflow": "vggflow", "dpo": "dpo",
    "dpo1step": "dpo", "onestepdpo": "dpo", "pso": "pso", "grpo": "grpo", "grpo1step": "grpo",
    "base": "base", "turbo": "base", "sdturbo": "base", "sdxlturbo": "base", "sdturbobase": "base", "sdxlturbobase": "base",
}
ALIASES: dict[str, dict[str, str]] = {
    "sd_turbo_main": {**_COMMON, "sdturbobase": "base", "sd15": "sd15", "sdv15": "sd15", "lcm": "lcm_sd15",
                      "lcmsd15": "lcm_sd15", "sd21": "sd21", "sdv21": "sd21"},
    "sdxl_turbo_main": {**_COMMON, "sdxlturbobase": "base", "sdxl": "sdxl", "sdxlbase": "sdxl",
                        "sdxldpo": "sdxl_dpo", "diffusiondpo": "sdxl_dpo"},
    "hpsv3_efficiency": dict(_COMMON),
    "geneval": {**_COMMON, "sdturbodrpo": "drpo"},
    "reference_objective": {"noreference": "no_reference", "noref": "no_reference", "none": "no_reference",
                            "perceptual": "perceptual", "perceptualloss": "perceptual", "lpips": "perceptual",
                            "refdrift": "ref_drift", "refdriftloss": "ref_drift", "referencedrift": "ref_drift",
                            "drpo": "ref_drift"},
    "ablation_feature_map": {"base": "base", "latentmae": "latent_mae_1", "rawlatent": "latent", "latent": "latent",
                             "vaedinov2": "dinov2", "dinov2": "dinov2", "vaedecodedinov2": "dinov2",
                             "vaedecdinov2": "dinov2"},
    "ablation_kernel": {"base": "base", "exp": "exponential", "gaussian": "rbf"},
    "ablation_k": {"base": "base"},
    "ablation_eta": {"base": "base"},
    "qwen3vl_preference": dict(_COMMON),
}


def norm(name: object) -> str:
    """Lower case, letters and digits only: 'DPO 1step' → 'dpo1step', 'K = 16' → 'k16'."""
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())


def canonical_row(table: str | None, name: object) -> str:
    """The paper's row key for a results file's method name, or the name itself when unknown (or
    when `table` is None: a table compared with none of the paper's). An ablation point labelled
    `<grid>=<value>` ("kernel=rbf", the workflow's default label) is matched by its value."""
    n = norm(name)
    for row in ROWS.get(table, []):
        if n in (norm(row.key), norm(row.label)):
            return row.key
    aliases = ALIASES.get(table, {})
    if n in aliases:
        return aliases[n]
    if str(table).startswith("ablation_") and "=" in str(name):
        value = canonical_row(table, str(name).split("=", 1)[1])
        if any(r.key == value for r in ROWS.get(table, [])):
            return value
    if table in ("ablation_k", "ablation_eta"):  # "K=16", "eta_3000", "3e3" → "16", "3000"
        m = re.search(r"(\d+(?:\.\d+)?(?:e\d+)?)$", str(name).strip().lower())
        if m:
            v = float(m.group(1))
            if v.is_integer() and any(r.key == str(int(v)) for r in ROWS[table]):
                return str(int(v))
    return str(name)


def canonical_test_set(name: object) -> str:
    """'pickapic_test_2048', 'PaP-v2', 'Pick-a-Pic v2' → 'pickapic_v2'; 'PartiPrompts' → 'parti'."""
    n = norm(name)
    if n in ("", "nan", "none"):
        return ""
    if n.startswith(("pickapic", "pap")):
        return "pickapic_v2"
    if n.startswith("parti"):
        return "parti"
    if n.startswith("geneval"):
        return "geneval"
    return str(name)


def row_label(table: str, key: str) -> str:
    for row in ROWS.get(table, []):
        if row.key == key:
            return row.label
    return key


def row_info(table: str, key: str) -> PaperRow | None:
    return next((r for r in ROWS.get(table, []) if r.key == key), None)
