"""The registry's files under its root: staging, verified copies, atomic renames.

Layout:
    <root>/v7/model.safetensors, model.onnx, card.json   (read-only after registration)
    <root>/v7/decisions/<record_id>.json                 (append-only)
    <root>/.staging/<uuid>/                              (being copied; never read)
    <root>/.orphans/<version>-<uuid>/                    (a crash's leftovers, moved aside)

Why this order: files are copied into staging, fsynced and re-hashed; only then is
the staging directory renamed to `<root>/<version>` and the root fsynced, and only
after that does the version's row commit. A version the database knows is therefore
always complete on disk. Torch is never imported here: verification is hashing.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
import uuid
from pathlib import Path

from dispatchloop.decisions.featurizer import FEATURIZER_VERSION
from dispatchloop.events import DecisionRecord
from dispatchloop.registry.base import DECISIONS_DIR, VersionIntegrityError
from dispatchloop.rl.card import (
    ModelCard,
    fsync_directory,
    sha256_of,
    stray_files,
    write_card,
    write_json_durably,
)

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
ORPHANS_DIR = ".orphans"
STALE_STAGING_S = 6 * 3600.0
"""A staging directory untouched this long belongs to a process that died."""
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def check_files(directory: Path, files: dict[str, str], what: str) -> dict[str, str]:
    """Every listed file exists with its sha256; else VersionIntegrityError naming the file."""
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise VersionIntegrityError(f"{what}: file {name} is missing (half-written?)")
        actual = sha256_of(path)
        if actual != expected:
            raise VersionIntegrityError(
                f"{what}: sha256 of {name} is {actual[:12]}…, expected {expected[:12]}… "
                "(the file was changed or corrupted)"
            )
    return dict(files)


def check_featurizer(card: ModelCard, what: str) -> None:
    """A candidate scorer must expect the features this code computes."""
    if card.network.get("kind") == "candidate" and card.featurizer_version != FEATURIZER_VERSION:
        raise VersionIntegrityError(
            f"{what} was trained on featurizer version {card.featurizer_version}, "
            f"this code computes version {FEATURIZER_VERSION}"
        )


def report_strays(directory: Path, card: ModelCard) -> tuple[str, ...]:
    """Pickle-capable files next to a model: never opened, logged so an operator removes them."""
    found = tuple(stray_files(directory, card))
    for name in found:
        logger.warning("ignoring %s in %s: pickle-capable files are never loaded", name, directory)
    return found


def stage_copy(root: Path, source: Path, card: ModelCard) -> Path:
    """Copy the card's files into a fresh staging directory, fsync and re-hash the copies."""
    staging = root / STAGING_DIR / uuid.uuid4().hex
    staging.mkdir(parents=True)
    for name in card.files:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
        with target.open("rb") as handle:
            os.fsync(handle.fileno())
    check_files(staging, card.files, f"copy of {source}")
    return staging


def sweep_staging(root: Path, older_than_s: float = STALE_STAGING_S) -> int:
    """Remove staging directories a killed `register` left behind (old enough that no
    live process can still be copying into them); return how many."""
    base = root / STAGING_DIR
    if not base.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    stale = [path for path in base.iterdir() if path.stat().st_mtime < cutoff]
    for path in stale:
        logger.info("removing stale staging directory %s", path)
        discard(path)
    return len(stale)


def install(root: Path, staging: Path, version: str, card: ModelCard) -> Path:
    """Write the versioned card, make the files read-only, rename staging into place."""
    write_card(staging, card)
    for name in [*card.files, "card.json"]:
        (staging / name).chmod(_READ_ONLY)
    fsync_directory(staging)
    target = root / version
    if target.exists():
        move_aside(root, target)
    os.replace(staging, target)
    fsync_directory(root)
    return target


def move_aside(root: Path, directory: Path) -> None:
    """A version directory the database does not know (a crash between rename and commit)."""
    orphans = root / ORPHANS_DIR
    orphans.mkdir(exist_ok=True)
    destination = orphans / f"{directory.name}-{uuid.uuid4().hex[:8]}"
    logger.warning("moving unregistered %s aside to %s", directory, destination)
    os.replace(directory, destination)
    fsync_directory(root)


def discard(path: Path) -> None:
    """Remove a staging directory (read-only files included)."""
    shutil.rmtree(path, ignore_errors=True)


def decision_path(root: Path, version: str, record_id: str) -> Path:
    """`<root>/<version>/decisions/<record_id>.json`."""
    return root / version / DECISIONS_DIR / f"{record_id}.json"


def write_decision(root: Path, version: str, record: DecisionRecord) -> Path:
    """Write a decision record file durably; an existing record is never overwritten."""
    path = decision_path(root, version, record.record_id)
    if not path.parent.is_dir():
        path.parent.mkdir()
        fsync_directory(path.parent.parent)
    if not path.exists():
        write_json_durably(path, record.model_dump(mode="json"))
    return path
