"""Pick-a-Pic v2 preference pairs for the offline variant (METHOD.md §2.5).

Reads parquet files with the v2 schema (`caption`, `jpg_0`, `jpg_1` image bytes, `label_0`,
`label_1`) and writes `<out>/pairs.jsonl` rows {prompt, chosen, rejected, source, source_row} with
the two images as files under `<out>/images/` (paths relative to the JSONL, bytes copied verbatim:
no re-encoding). The label-1 image is `chosen`.

Ties (label 0.5 / 0.5) carry no preference: `ties="drop"` (default) skips them and counts them,
`ties="error"` stops at the first one (for sources that should have none). Rows with missing
labels, empty captions or undecodable images are skipped and counted. Captions in
`exclude_prompts` (compared lowercased, whitespace collapsed) are skipped, keeping training pairs
disjoint from a test list. `<out>/pairs.meta.json` records the counts, options and source files.
"""

from __future__ import annotations

import io
import math
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from drpo.data.prompts import check_disjoint, normalize_prompt
from drpo.io import atomic_path, write_json, write_jsonl

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
TIE_POLICIES = ("drop", "error")
MARKER = ".drpo-pickapic-pairs"  # marks images/ as ours, so a rebuild may clear it
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


@dataclass
class PairStats:
    rows_read: int = 0
    pairs: int = 0
    ties: int = 0
    excluded: int = 0
    invalid_labels: int = 0
    empty_captions: int = 0
    bad_images: int = 0


def _image_bytes(value) -> bytes | None:
    """Raw bytes from a binary column or a Hugging Face Image struct {bytes, path}."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value else None


def _image_ext(data: bytes) -> str | None:
    """File extension of decodable image bytes (None when PIL cannot read them)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.verify()
    except Exception:  # noqa: BLE001 - any decoder error means "not an image"
        return None
    return _EXT.get(fmt or "", (fmt or "img").lower())


def _label(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def iter_rows(parquet_files: Sequence[str | Path], batch_size: int = 64) -> Iterator[tuple[str, int, dict]]:
    """(file name, row index in file, row) over all files, reading a few rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from drpo.errors import corrupt_file

    for f in parquet_files:
        f = Path(f)
        if not f.exists():
            raise FileNotFoundError(f"parquet file {f} does not exist")
        fix = "download the shard again (drpo fetch --config <your config> lists it with its size)"
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as err:
            raise corrupt_file(f, err, fix) from None
        names = set(pf.schema_arrow.names)
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{f}: lacks column(s) {missing} of the Pick-a-Pic v2 schema (has {sorted(names)})")
        index = 0
        batches = pf.iter_batches(batch_size=batch_size, columns=list(COLUMNS))
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:  # a row group cut short
                raise corrupt_file(f, err, fix) from None
            if batch is None:
                break
            for row in batch.to_pylist():
                yield f.name, index, row
                index += 1


def build_pickapic_pairs(
    parquet_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    max_pairs: int | None = None,
    exclude_prompts: Iterable[str] = (),
    ties: str = "drop",
) -> PairStats:
    """Write `<out_dir>/pairs.jsonl` + images from Pick-a-Pic v2 parquet files; the counts."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties={ties!r}: expected one of {TIE_POLICIES}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if not parquet_files:
        raise ValueError("give at least one parquet file")
    out = Path(out_dir)
    images = out / "images"
    if images.exists():
        if not (images / MARKER).exists() and any(images.iterdir()):
            raise ValueError(f"{images} exists and was not written by this builder; choose another --out")
        shutil.rmtree(images)  # our previous (maybe interrupted) output: no stale image stays behind
    images.mkdir(parents=True)
    (images / MARKER).touch()
    excluded = list(exclude_prompts)
    exclude_set = {normalize_prompt(p) for p in excluded}

    stats = PairStats()
    rows: list[dict] = []
    for fname, index, row in iter_rows(parquet_files):
        if max_pairs is not None and stats.pairs >= max_pairs:
            break
        stats.rows_read += 1
        caption = (row["caption"] or "").strip()
        if not caption:
            stats.empty_captions += 1
            continue
        if normalize_prompt(caption) in exclude_set:
            stats.excluded += 1
            continue
        l0, l1 = _label(row["label_0"]), _label(row["label_1"])
        if l0 is None or l1 is None:
            stats.invalid_labels += 1
            continue
        if l0 == l1:
            if ties == "error":
                raise ValueError(f"{fname}: row {index}: tie (label_0 = label_1 = {l0}); use ties='drop' to skip ties")
            stats.ties += 1
            continue
        chosen, rejected = (row["jpg_0"], row["jpg_1"]) if l0 > l1 else (row["jpg_1"], row["jpg_0"])
        chosen, rejected = _image_bytes(chosen), _image_bytes(rejected)
        exts = [_image_ext(b) if b else None for b in (chosen, rejected)]
        if None in exts:
            stats.bad_images += 1
            continue
        n = stats.pairs
        paths = [f"images/{n:07d}_chosen.{exts[0]}", f"images/{n:07d}_rejected.{exts[1]}"]
        for rel, data in zip(paths, (chosen, rejected)):
            with atomic_path(out / rel) as tmp:
                tmp.write_bytes(data)
        rows.append({"prompt": caption, "chosen": paths[0], "rejected": paths[1], "source": fname, "source_row": index})
        stats.pairs += 1
    if not rows:
        raise ValueError(f"no usable pairs in {[str(f) for f in parquet_files]} ({asdict(stats)})")
    check_disjoint(rows, excluded, train_name="the Pick-a-Pic pairs", test_name="the excluded prompts")
    write_json(out / "pairs.meta.json", {
        "stats": asdict(stats),
        "options": {"max_pairs": max_pairs, "ties": ties, "excluded_prompts": len(exclude_set)},
        "sources": [{"file": str(Path(f).resolve()), "bytes": Path(f).stat().st_size} for f in parquet_files],
    })
    write_jsonl(out / "pairs.jsonl", rows)
    return stats
