"""``data/manifest.json``: one small file that stands for the HR and LR images every later stage reads.

``pretrain_sr``, ``train`` and ``evaluate`` read ``data/raw`` and ``data/lr`` (4,205 files by default). Listed
as DVC dependencies, those two folders cost every stage ≈ 0.9 s of DVC's own time on the development
machine: around each stage DVC walks them and looks each file up in its state database several times (the
change check, the run-cache lookup, the lock entry). The ``degrade`` stage, which depends on ``data/raw`` and
writes ``data/lr``, also writes this manifest, and the later stages depend on it instead of the folders. It changes exactly when a
file under either folder is added, removed, renamed or rewritten with other bytes, so DVC re-runs the same
stages as before. A hand edit under ``data/raw`` or ``data/lr`` changes an output of ``download`` or
``degrade``, which DVC then re-runs first, rewriting the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from src.utils import outputs_digest, write_json_atomic


def folder_summary(root: Path) -> dict[str, int | str]:
    """Files, bytes and md5 (over every file's path and the md5 of its bytes) of the files under ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder to summarise in the data manifest")
    files = sorted(p for p in root.rglob("*") if p.is_file())  # the walk outputs_digest([root]) would make
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "md5": outputs_digest(files)}


def write_manifest(path: Path, folders: Mapping[str, Path]) -> dict[str, dict[str, int | str]]:
    """Write ``{name: folder_summary(folder)}`` to ``path`` atomically and return it."""
    manifest = {name: {"path": folder.as_posix(), **folder_summary(folder)} for name, folder in folders.items()}
    write_json_atomic(path, manifest)
    return manifest
