"""Small shared helpers: atomic writes, file digests, seeding, device choice, moving batches."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it over ``path``, on error delete it.

    Works for files and for directories (the caller creates whatever it likes at the yielded path).
    Readers never see a half-written output, and a failure leaves the previous output intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.rmdir()  # the caller decides whether it is a file or a folder
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path | str, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_torch_atomic(path: Path | str, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically. torch names the archive's inner folder after the file, so the
    temporary file carries the final name (in a temporary folder beside it): the same tensors give the same
    bytes on every run, as DVC's hash of the output expects."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as folder:
        tmp = Path(folder) / path.name
        torch.save(obj, tmp)
        os.replace(tmp, path)


def save_npz_atomic(path: Path | str, **arrays: Any) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def read_json(path: Path | str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (has the stage that writes it run?)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when present, otherwise the CPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("params.yaml: device: cuda requested but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(choice)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside dataclasses, dicts, lists and tuples to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def progress(iterable: Any, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal; silent in logs and CI, and in every process but rank 0 of a torchrun group."""
    from tqdm.auto import tqdm

    from src.distributed import is_main

    return tqdm(iterable, disable=not sys.stderr.isatty() or not is_main(), leave=False, dynamic_ncols=True, **kwargs)


def file_md5(path: Path) -> str:
    """md5 of a file (DVC's file hash); a file unchanged since it was last hashed here is not read again."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _MD5:
        _MD5[key] = _read_md5(path)
    return _MD5[key]


_MD5: dict[tuple[str, int, int, int], str] = {}


def _read_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def outputs_digest(paths: list[Path]) -> str:
    """md5 over the files under ``paths`` (names and contents): identifies the run that produced them."""
    h = hashlib.md5()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(str(f).encode())
            h.update(file_md5(f).encode() if f.exists() else b"missing")
    return h.hexdigest()
