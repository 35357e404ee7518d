"""Judge backends: Qwen3-VL through transformers, and any OpenAI-compatible chat server (vLLM,
SGLang) serving a vision model. Both send the same message (drpo.eval.judge.build_messages) and
share the reply parser, so the two give the same verdicts for the same model text.

transformers is imported inside functions: `drpo judge --backend openai` never loads it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image

from drpo.contracts import Judgement
from drpo.devices import resolve_device
from drpo.eval.judge import build_messages, judge_instructions, parse_judgement
from drpo.hub import resolve_model

DEFAULT_QWEN = "Qwen/Qwen3-VL-8B-Instruct"


# -- transformers: Qwen3-VL -----------------------------------------------------------------------


def make_qwen3vl_processor(image_processor: Any, tokenizer: Any, video_processor: Any, chat_template: str | None = None):
    """A Qwen3VLProcessor from its three parts.

    Without torchvision (our pinned environment) transformers cannot resolve the video processor's
    base class for its type check, so a subclass with the same name skips that one check. Videos
    are never processed here; the video processor is only carried along.
    """
    from transformers import Qwen3VLProcessor

    try:
        return Qwen3VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=chat_template
        )
    except (AttributeError, ImportError, ValueError):
        pass

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            return type(argument)
        return Qwen3VLProcessor.check_argument_for_proper_class(self, argument_name, argument)

    cls = type("Qwen3VLProcessor", (Qwen3VLProcessor,), {"check_argument_for_proper_class": check_argument_for_proper_class})
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=chat_template)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_qwen3vl_processor(folder: str | os.PathLike):
    """AutoProcessor when it yields a full processor; otherwise (no torchvision: AutoProcessor
    silently returns just the tokenizer) assemble tokenizer + PIL image processor + video processor
    from the folder's files, with the folder's chat template."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    folder = Path(folder)
    try:
        proc = AutoProcessor.from_pretrained(folder)
        if hasattr(proc, "image_processor") and getattr(proc, "chat_template", None):
            return proc
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    video_cfg = _read_json(folder / "video_preprocessor_config.json") or _read_json(folder / "processor_config.json").get(
        "video_processor", {}
    )
    video_cfg = {k: v for k, v in video_cfg.items() if k not in ("video_processor_type", "processor_class")}
    if not video_cfg:
        video_cfg = {k: getattr(image_processor, k) for k in ("patch_size", "merge_size", "temporal_patch_size")}
    try:
        video_processor = Qwen3VLVideoProcessor(**video_cfg)
    except (TypeError, ValueError):  # an unexpected key in a newer config: geometry is all we need
        video_processor = Qwen3VLVideoProcessor(**{k: getattr(image_processor, k) for k in ("patch_size", "merge_size", "temporal_patch_size")})
    template = None
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    elif (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    template = template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(f"{folder}: no chat template (chat_template.jinja, chat_template.json or in tokenizer_config.json)")
    return make_qwen3vl_processor(image_processor, tokenizer, video_processor, chat_template=template)


def _attention_implementation(device: str, dtype: Any) -> str:
    import torch
    from transformers.utils import is_flash_attn_2_available

    if device.startswith("cuda") and dtype in (torch.float16, torch.bfloat16) and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


class QwenVLJudge:
    """Qwen3-VL as a pairwise judge: greedy decoding of at most `max_new_tokens` (METHOD §5.4)."""

    name = "qwen3vl"

    def __init__(
        self,
        path: str | os.PathLike = DEFAULT_QWEN,
        device: str = "auto",
        dtype: str = "bfloat16",
        max_new_tokens: int = 96,
        attn_implementation: str | None = None,
    ):
        import torch
        from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

        folder = resolve_model(path, what="Qwen3-VL judge")
        self.model_id = str(path)
        device = str(resolve_device(device))
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype name (float32, bfloat16, float16)")
        attn = attn_implementation or _attention_implementation(device, torch_dtype)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "attn_implementation": attn}
        if device == "cuda":
            kwargs["device_map"] = "auto"
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(folder, **kwargs).eval()
        if device != "cuda":
            self.model.to(device)
        self.processor = load_qwen3vl_processor(folder)
        self.device = device
        self.attn_implementation = attn
        tok = self.processor.tokenizer
        # greedy: drop the checkpoint's sampling defaults so generate() neither samples nor warns
        base = self.model.generation_config.to_dict() if self.model.generation_config is not None else {}
        keep = {k: base[k] for k in ("eos_token_id", "bos_token_id", "pad_token_id") if base.get(k) is not None}
        keep.setdefault("pad_token_id", tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.generation_config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=int(max_new_tokens), **keep)

    def generate_text(self, prompt: str, image_a: Image.Image, image_b: Image.Image) -> str:
        import torch

        text = self.processor.apply_chat_template(build_messages(prompt), tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=[image_a.convert("RGB"), image_b.convert("RGB")], return_tensors="pt")
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0]

    def judge(self, prompt: str, image_a: Image.Image, image_b: Image.Image, metadata: dict | None = None) -> Judgement:
        return parse_judgement(self.generate_text(prompt, image_a, image_b))


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / Qwen), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


QWEN_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# A minimal chat template with the Qwen layout (written here; the real checkpoint brings its own).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen3vl(folder: str | os.PathLike, seed: int = 0, image_pixels: tuple[int, int] = (32 * 32, 64 * 64)) -> Path:
    """A random-weight Qwen3-VL of the real classes (~0.2 M parameters) with a byte-level BPE
    tokenizer and processor, saved to `folder`; loadable by QwenVLJudge. For tests and dry runs."""
    import torch
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    vocab = {ch: i for i, ch in enumerate(_byte_level_alphabet())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġ", "a"), ("i", "n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=merges)  # <|endoftext|> is added as eos/pad
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)), strict=True))
    geometry = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    image_processor = Qwen2VLImageProcessorPil(
        **geometry, size={"shortest_edge": image_pixels[0], "longest_edge": image_pixels[1]}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    video_processor = Qwen3VLVideoProcessor(**geometry)
    processor = make_qwen3vl_processor(image_processor, tokenizer, video_processor, chat_template=TINY_CHAT_TEMPLATE)
    head_dim = 16
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            # multimodal rope: the (t, h, w) sections split head_dim / 2 rotary frequencies
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": geometry["patch_size"],
            "spatial_merge_size": geometry["merge_size"],
            "temporal_patch_size": geometry["temporal_patch_size"],
            "out_hidden_size": 64,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# -- OpenAI-compatible HTTP -----------------------------------------------------------------------


def image_data_url(image: Image.Image) -> str:
    """A base64 PNG data: URL (what vLLM and SGLang accept in image_url parts)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIChatJudge:
    """A vision chat model behind an OpenAI-compatible /chat/completions endpoint.

    Sends only to `base_url` (no proxies from the environment, no redirects). Connection errors,
    timeouts, 429 and 5xx are retried `retries` times with exponential backoff; other HTTP errors
    (wrong model name, bad key) raise at once, since every later request would fail the same way.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60,
        retries: int = 3,
        backoff: float = 1.0,
        max_tokens: int = 96,
    ):
        import requests

        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ValueError(f"environment variable {api_key_env} (the API key) is not set")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_id = model
        self.timeout, self.retries, self.backoff, self.max_tokens = float(timeout), int(retries), float(backoff), int(max_tokens)
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Content-Type"] = "application/json"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def payload(self, prompt: str, image_a: Image.Image, image_b: Image.Image) -> dict:
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(image_a)}},
            {"type": "image_url", "image_url": {"url": image_data_url(image_b)}},
            {"type": "text", "text": judge_instructions(prompt)},
        ]
        return {
            "model": self.model_id,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    def post(self, payload: dict) -> dict:
        import requests

        body = json.dumps(payload)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self.session.post(self.url, data=body, timeout=self.timeout, allow_redirects=False)
            except (requests.ConnectionError, requests.Timeout) as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                continue
            if resp.status_code != 200:
                raise RuntimeError(f"{self.url} answered HTTP {resp.status_code}: {resp.text[:500]} (check --model and the API key)")
            try:
                return resp.json()
            except ValueError:
                raise RuntimeError(f"{self.url} answered 200 with a body that is not JSON: {resp.text[:300]!r}") from None
        raise RuntimeError(f"{self.url} failed {self.retries + 1} times; last error: {last}. Is the server running?")

    def judge(self, prompt: str, image_a: Image.Image, image_b: Image.Image, metadata: dict | None = None) -> Judgement:
        data = self.post(self.payload(prompt, image_a, image_b))
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return Judgement("invalid", None, "no message content in the response", json.dumps(data)[:2000])
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return parse_judgement(content)


# -- factory --------------------------------------------------------------------------------------


# backend name -> "module:Class", imported only when chosen (the world's judge lives with the world)
JUDGE_BACKENDS = {
    "qwen": "drpo.eval.judge_backends:QwenVLJudge",  # path, device, dtype, max_new_tokens
    "openai": "drpo.eval.judge_backends:OpenAIChatJudge",  # base_url, model, api_key_env, ...
    "world": "drpo.world.judge:WorldJudge",  # the shapes world's checker judge
}


def build_judge(backend: str, **options: Any):
    """The judge of `backend` (JUDGE_BACKENDS) with its options."""
    import importlib

    if backend not in JUDGE_BACKENDS:
        raise ValueError(f"unknown judge backend {backend!r}; choose {', '.join(JUDGE_BACKENDS)}")
    module, _, name = JUDGE_BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), name)(**options)
