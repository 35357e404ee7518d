"""Public prompt sets (METHOD.md §5.3): read the copy packaged in `drpo/data/public/` (or a local
override, or a download for a set without a packaged copy), check sha256, write a normalised JSONL.

Output rows: {"prompt_id": int (0-based order in the source), "prompt": str, ...metadata}, with
PartiPrompts' `category`/`challenge` and GenEval's `tag`/`include`/`exclude` as top-level keys
(what `drpo sample` copies into each manifest row's metadata). Next to `<out>` a sidecar
`<out>.sha256.json` records the source file's sha256, so every result can name the exact list.

A set with `dedupe=True` keeps the first line of each prompt (compared by `normalize_prompt`) and
drops later repeats; `prompt_id` stays the line's 0-based index in the file. `exclude=` drops a
public set's prompts that occur in the excluded files (its bytes are fixed, so it cannot be edited);
both are recorded in the sidecar. A user's own file (`prepare_prompt_file`) is never changed: an
overlap there is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from drpo.io import atomic_path, read_text, sha256_file, write_json


@dataclass(frozen=True)
class PromptSource:
    name: str
    filename: str  # name of the verbatim copy, in drpo/data/public/ or in a local_dir override
    url: str
    sha256: str
    format: str  # "parti_tsv" | "geneval_jsonl" | "lines"
    count: int  # rows in the file
    license: str
    packaged: bool = True  # drpo/data/public/ holds a copy (else: local_dir or download)
    dedupe: bool = False  # keep the first of prompts equal under normalize_prompt


PROMPT_SETS: dict[str, PromptSource] = {
    s.name: s
    for s in (
        PromptSource(
            "partiprompts", "PartiPrompts.tsv",
            "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv",
            "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb", "parti_tsv", 1632, "Apache-2.0",
        ),
        PromptSource(
            "geneval", "geneval_evaluation_metadata.jsonl",
            "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl",
            "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13", "geneval_jsonl", 553, "MIT",
        ),
        PromptSource(
            "geneval_object_names", "geneval_object_names.txt",
            "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/object_names.txt",
            "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd", "lines", 80, "MIT",
        ),
        PromptSource(
            "pickapic_test_2048", "pickapic_test_prompts_2048.txt",
            "https://raw.githubusercontent.com/yifan123/flow_grpo/main/dataset/pickscore/test.txt",
            "d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262", "lines", 2048, "MIT (Pick-a-Pic)",
        ),
        PromptSource(  # the DrPO authors' training prompts; 25 368 distinct under normalize_prompt
            "pickapic_train_25432", "pickapic_train_prompts_25432.txt",
            "https://raw.githubusercontent.com/UGVly/DrPO/main/data/pickscore/train.txt",
            "2f425adcbb9a6d0feee7c6c448e1cb83a1f71deca9434b803907e2578eca837f", "lines", 25432, "MIT (Pick-a-Pic)",
            dedupe=True,
        ),
    )
}
PUBLIC_PACKAGE = "drpo.data"
PUBLIC_FOLDER = "public"  # drpo/data/public/: the packaged copies (package data)
DOWNLOAD_TIMEOUT_S = (10, 60)  # connect, read


class ChecksumError(ValueError):
    """A prompt file whose bytes are not the published ones."""


def verify_sha256(path: str | Path, source: PromptSource) -> str:
    """The file's sha256; ChecksumError naming file, expected and actual hash when they differ."""
    actual = sha256_file(path)
    if actual != source.sha256:
        raise ChecksumError(
            f"{path}: sha256 mismatch for prompt set '{source.name}': expected {source.sha256}, got {actual}. "
            f"The file is not the published {source.filename}; replace it with a verbatim copy of {source.url}"
        )
    return actual


def packaged_path(name: str) -> Path:
    """Where the packaged copy of prompt set `name` lies (drpo/data/public/<filename>)."""
    src = _source(name)
    return Path(str(resources.files(PUBLIC_PACKAGE).joinpath(PUBLIC_FOLDER, src.filename)))


def _source(name: str) -> PromptSource:
    if name not in PROMPT_SETS:
        raise KeyError(f"unknown prompt set '{name}' (known: {', '.join(PROMPT_SETS)}; or use a file)")
    return PROMPT_SETS[name]


def fetch_source(name: str, local_dir: str | Path | None = None, allow_download: bool = False,
                 download_dir: str | Path | None = None) -> tuple[Path, str]:
    """(verified file, origin) for prompt set `name`.

    In order: `local_dir`/<filename> when `local_dir` is given (an override; a missing file is an
    error unless `allow_download`); else the packaged copy (drpo/data/public/); else a download into
    `download_dir` when `allow_download`. Every path is sha256-checked (ChecksumError naming the file).
    """
    src = _source(name)
    if local_dir is not None:
        local = Path(local_dir) / src.filename
        if local.exists():
            verify_sha256(local, src)
            return local, f"local:{local.resolve()}"
        if not allow_download:
            raise FileNotFoundError(
                f"{local} not found: put a verbatim copy of {src.url} there (sha256 {src.sha256}), "
                f"or leave out --local-dir to use the packaged copy, or allow downloading (--download)"
            )
    elif src.packaged:
        packaged = packaged_path(name)
        if not packaged.is_file():
            raise FileNotFoundError(
                f"{packaged}: the packaged copy of prompt set '{name}' is missing (a broken install of drpo?); "
                f"reinstall drpo, or give a folder holding {src.filename} (--local-dir)"
            )
        verify_sha256(packaged, src)
        return packaged, f"package:drpo/data/{PUBLIC_FOLDER}/{src.filename}"
    if not allow_download:
        raise FileNotFoundError(
            f"prompt set '{name}': give a folder holding {src.filename} (--local-dir) or allow downloading (--download)"
        )
    target = Path(download_dir or ".") / src.filename
    if target.exists() and sha256_file(target) == src.sha256:
        return target, f"download:{src.url}"
    import requests

    try:
        resp = requests.get(src.url, timeout=DOWNLOAD_TIMEOUT_S)
        resp.raise_for_status()
    except requests.RequestException as err:
        raise FileNotFoundError(f"prompt set '{name}': download of {src.url} failed ({err})") from None
    with atomic_path(target) as tmp:
        tmp.write_bytes(resp.content)
        verify_sha256(tmp, src)  # a wrong download never lands under the final name
    return target, f"download:{src.url}"


# -- parsing ------------------------------------------------------------------------------------


def parse_parti_tsv(text: str, where: str = "PartiPrompts.tsv") -> list[dict]:
    """Rows of the Parti TSV. Quotes are literal text (the file uses no CSV quoting)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    need = {"Prompt", "Category", "Challenge"}
    if not need <= set(reader.fieldnames or []):
        raise ValueError(f"{where}: header {reader.fieldnames} lacks {sorted(need - set(reader.fieldnames or []))}")
    rows = []
    for i, r in enumerate(reader):
        if None in r:  # more fields than the header: a tab inside a prompt
            raise ValueError(f"{where}:{i + 2}: {len(reader.fieldnames) + len(r[None])} fields, expected {len(reader.fieldnames)}")
        rows.append({"prompt_id": i, "prompt": r["Prompt"].strip(), "category": r["Category"].strip(),
                     "challenge": r["Challenge"].strip()})
    return rows


def _json_rows(text: str, where: str, required: tuple[str, ...], what: str) -> list[dict]:
    """JSON-lines prompt rows; a bad line or a row without the `required` keys names file and line.
    Rows keep their own prompt_id; otherwise it is the row's index."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or any(k not in row for k in required):
            raise ValueError(f"{where}:{lineno}: {what} needs {' and '.join(repr(k) for k in required)}")
        rows.append({"prompt_id": len(rows), **row})
    return rows


def parse_geneval_jsonl(text: str, where: str = "evaluation_metadata.jsonl") -> list[dict]:
    """GenEval metadata rows, kept verbatim (tag/include/exclude) plus prompt_id."""
    return _json_rows(text, where, ("prompt", "tag"), "a GenEval row")


def parse_lines(text: str, where: str = "prompts.txt") -> list[dict]:
    """One prompt per non-empty line."""
    return [{"prompt_id": i, "prompt": p} for i, p in enumerate(line.strip() for line in text.splitlines() if line.strip())]


PARSERS = {"parti_tsv": parse_parti_tsv, "geneval_jsonl": parse_geneval_jsonl, "lines": parse_lines}


def read_prompt_source(name: str, path: str | Path) -> list[dict]:
    src = _source(name)
    rows = PARSERS[src.format](read_text(path), str(path))
    if len(rows) != src.count:
        raise ValueError(f"{path}: {len(rows)} prompts, expected {src.count} for prompt set '{name}'")
    return rows


def load_prompts(path: str | Path, max_prompts: int | None = None, *, key: str | None = None) -> list[dict]:
    """The one prompt loader: rows with at least `prompt` and `prompt_id` from a prompt file.

    A `.tsv` file is Parti's TSV. Otherwise, line by line (blank lines skipped): a line starting
    with `{` is a JSON row with a `prompt` key and any metadata (GenEval's tag/include/exclude), any
    other line is a prompt (in a `.jsonl` file, an error). A row keeps its own `prompt_id`, else gets its 0-based index among the
    file's prompts. `key` names the config key that gave the path, for the error messages.
    """
    path = Path(path)
    where = f" (config key {key})" if key else ""
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist{where}")
    text = read_text(path)
    if path.suffix == ".tsv":
        rows = parse_parti_tsv(text, str(path))
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict) or "prompt" not in row:
                    raise ValueError(f"{path}:{lineno}: a JSON prompt row needs a 'prompt' key")
                rows.append({"prompt_id": len(rows), **row})
            elif path.suffix == ".jsonl":
                raise ValueError(f"{path}:{lineno}: not a JSON row; a .jsonl prompt file holds one JSON object per line")
            else:
                rows.append({"prompt_id": len(rows), "prompt": line.strip()})
    if max_prompts is not None:
        rows = rows[:max_prompts]
    if not rows:
        raise ValueError(f"prompt file {path} holds no prompts{where}")
    return rows


# -- disjointness -------------------------------------------------------------------------------


def normalize_prompt(text: str) -> str:
    """Lowercase, whitespace collapsed: the identity used to keep train and test apart."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _texts(rows: Iterable[dict | str]) -> list[str]:
    return [r if isinstance(r, str) else r["prompt"] for r in rows]


def check_disjoint(train_rows: Iterable[dict | str], test_rows: Iterable[dict | str], *,
                   train_name: str = "train", test_name: str = "test") -> None:
    """Raise ValueError naming the prompts (normalised) that occur in both sets."""
    test = {normalize_prompt(t) for t in _texts(test_rows)}
    shared = sorted({n for n in map(normalize_prompt, _texts(train_rows)) if n in test})
    if shared:
        shown = "; ".join(repr(s) for s in shared[:10]) + (f"; ... ({len(shared) - 10} more)" if len(shared) > 10 else "")
        raise ValueError(
            f"{len(shared)} prompt(s) are in both {train_name} and {test_name} (compared lowercased, "
            f"whitespace collapsed): {shown}. Remove them from {train_name}."
        )


# -- preparation ----------------------------------------------------------------------------------


def sidecar_path(out_path: str | Path) -> Path:
    return Path(f"{out_path}.sha256.json")


def _write(rows: list[dict], out_path: Path, record: dict) -> Path:
    """Sidecar first, then the JSONL: whoever sees the JSONL also finds its provenance."""
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    record = {**record, "count": len(rows), "output_sha256": hashlib.sha256(body).hexdigest()}
    write_json(sidecar_path(out_path), record)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(body)
    return out_path


def _check_excludes(rows: list[dict], exclude: Sequence[str | Path], name: str) -> None:
    for other in exclude:
        check_disjoint(rows, load_prompts(other), train_name=name, test_name=str(other))


def dedupe_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): the first row of each prompt under normalize_prompt, and the later repeats."""
    seen: set[str] = set()
    kept, dropped = [], []
    for r in rows:
        key = normalize_prompt(r["prompt"])
        (dropped if key in seen else kept).append(r)
        seen.add(key)
    return kept, dropped


def drop_excluded(rows: list[dict], exclude: Sequence[str | Path]) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): rows whose prompt (normalised) is in none of the `exclude` prompt files."""
    banned = {normalize_prompt(t) for other in exclude for t in _texts(load_prompts(other))}
    kept = [r for r in rows if normalize_prompt(r["prompt"]) not in banned]
    return kept, [r for r in rows if normalize_prompt(r["prompt"]) in banned]


def _brief(rows: list[dict]) -> list[dict]:
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"]} for r in rows]


def prepare_prompt_set(name: str, out_path: str | Path, local_dir: str | Path | None = None,
                       allow_download: bool = False, exclude: Sequence[str | Path] = ()) -> Path:
    """Verified, normalised JSONL of public prompt set `name` at `out_path` (+ sha256 sidecar).

    The source is the packaged copy unless `local_dir` is given (see `fetch_source`). A `dedupe` set
    keeps the first of repeated prompts. `exclude`: prompt files (e.g. the test set) whose prompts are
    dropped from this set; the result is then checked disjoint from them. Both drops are recorded in
    the sidecar (`source_rows`, `duplicates_dropped`, `excluded_dropped`).
    """
    out_path = Path(out_path)
    src = _source(name)
    path, origin = fetch_source(name, local_dir, allow_download, download_dir=out_path.parent / ".sources")
    rows = read_prompt_source(name, path)
    source_rows = len(rows)
    duplicates: list[dict] = []
    if src.dedupe:
        rows, duplicates = dedupe_rows(rows)
    rows, excluded = drop_excluded(rows, exclude) if exclude else (rows, [])
    if not rows:
        raise ValueError(f"prompt set '{name}': no prompt left after excluding {[str(e) for e in exclude]}")
    _check_excludes(rows, exclude, name)
    return _write(rows, out_path, {
        "name": name, "source_file": src.filename, "source_url": src.url, "source_sha256": src.sha256,
        "verified": True, "origin": origin, "license": src.license, "source_rows": source_rows,
        "duplicates_dropped": len(duplicates), "excluded_dropped": _brief(excluded),
        "excluded_from": [str(e) for e in exclude],
    })


def prepare_prompt_file(path: str | Path, out_path: str | Path, exclude: Sequence[str | Path] = ()) -> Path:
    """A prompt file of our own (txt / jsonl / tsv) → the same normalised JSONL and sidecar."""
    path = Path(path)
    rows = load_prompts(path)
    if not rows:
        raise ValueError(f"prompt file {path} holds no prompts")
    rows = [{"prompt_id": int(r.get("prompt_id", i)), **{k: v for k, v in r.items() if k != "prompt_id"}}
            for i, r in enumerate(rows)]
    ids = [r["prompt_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: prompt_id values repeat; give each row a unique prompt_id or none")
    _check_excludes(rows, exclude, str(path))
    return _write(rows, Path(out_path), {
        "name": path.stem, "source_file": str(path), "source_url": None, "source_sha256": sha256_file(path),
        "verified": False, "origin": f"file:{path.resolve()}",
    })


def read_sidecar(out_path: str | Path) -> dict:
    """The provenance record of a prepared prompt set (for results to cite its sha256)."""
    path = sidecar_path(out_path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: prepare the prompt set with `drpo prompts prepare`")
    return json.loads(path.read_text())


__all__ = [
    "PROMPT_SETS", "PromptSource", "ChecksumError", "sha256_file", "verify_sha256", "fetch_source", "packaged_path",
    "dedupe_rows", "drop_excluded",
    "parse_parti_tsv", "parse_geneval_jsonl", "parse_lines", "read_prompt_source", "load_prompts",
    "normalize_prompt", "check_disjoint", "prepare_prompt_set", "prepare_prompt_file", "read_sidecar",
    "sidecar_path",
]
