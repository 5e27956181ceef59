"""Bring a format-version-1 bundle to the current format: ``python -m npcrl.runtime.bundle_migrate DIR...``.

A version-1 bundle id covered only the listed files, not the chat template or the other manifest
settings, so an edited template kept the old id. Such bundles are refused on load; this module
migrates one in place: it checks the manifest against its version-1 hash and every file against
its listed sha256 (the bytes the old id vouched for), then writes a version-2 manifest whose id
covers everything. The old id is recorded in ``provenance.migrated_from`` and appended to
``provenance.tokenizer_lineage`` (same tokenizer file, so play logs written under the old id stay
usable for training). The migration trusts the manifest's settings as they are now: it cannot
tell whether they were edited after the old id was logged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import npcrl.runtime.manifest_fields as mf
from npcrl.errors import BundleError
from npcrl.runtime.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    load_bundle,
    read_manifest_json,
    verify_files,
    write_manifest,
)


def version1_content_hash(files: dict[str, dict[str, Any]]) -> str:
    """The version-1 identity: sha256 over the sorted ``name\\0sha256`` lines of the listed files."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


def _version2_data(data: dict[str, Any], old_id: str) -> dict[str, Any]:
    upgraded = {key: value for key, value in data.items() if value is not None and key != "content_hash"}
    upgraded["format_version"] = BUNDLE_FORMAT_VERSION
    provenance = dict(mf.mapping(upgraded.get("provenance", {}), "provenance", MANIFEST_NAME))
    lineage = list(provenance.get("tokenizer_lineage", []))
    provenance["tokenizer_lineage"] = [*lineage, old_id] if old_id not in lineage else lineage
    provenance["migrated_from"] = {"format_version": 1, "bundle_id": old_id}
    upgraded["provenance"] = provenance
    return upgraded


def migrate_bundle(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Migrate the bundle at ``path`` in place; returns (old bundle id, new bundle id).

    A bundle already in the current format is only verified (both ids are then its id)."""
    root = Path(path).expanduser()
    where = str(root / MANIFEST_NAME)
    data = read_manifest_json(root)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: not an {BUNDLE_FORMAT} manifest")
    version = data.get("format_version")
    if version == BUNDLE_FORMAT_VERSION and not isinstance(version, bool):
        current = load_bundle(root).bundle_id
        return current, current
    if version != 1 or isinstance(version, bool):
        raise BundleError(f"{where}: field 'format_version' = {str(version)[:20]}; only version 1 can be migrated")
    files = mf.mapping(data.get("files"), "files", where)
    checked = {name: mf.file_entry(name, entry, where) for name, entry in files.items()}
    old_hash = version1_content_hash(checked)
    stored = data.get("content_hash")
    if stored is not None and stored != old_hash:
        raise BundleError(
            f"{where}: field 'content_hash' = {str(stored)[:80]!r} does not match the version-1 hash of the listed "
            f"files ({old_hash!r}); the manifest was edited, so there is no identity to migrate: export it again"
        )
    manifest = Manifest.from_dict(_version2_data(data, old_hash[:16]), where, check_hash=False)
    verify_files(root, manifest, verify=True)
    write_manifest(root, manifest)
    return old_hash[:16], load_bundle(root, verify=False).bundle_id


def migrate_if_old(path: str | os.PathLike[str]) -> bool:
    """Migrate the bundle at ``path`` if its manifest is version 1; True if it was migrated.

    For bundles npcrl keeps itself (the default bundle in the user cache), so that a cache filled
    by an earlier npcrl keeps working instead of being refused."""
    root = Path(path).expanduser()
    if not (root / MANIFEST_NAME).is_file():
        return False
    data = read_manifest_json(root)
    if not isinstance(data, dict) or data.get("format_version") != 1 or isinstance(data.get("format_version"), bool):
        return False
    old, new = migrate_bundle(root)
    print(f"npcrl: migrated the cached bundle {root} to the current format ({old} is now {new})", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'npcrl.runtime.bundle_migrate'}")
    parser.add_argument("bundles", nargs="+", help="bundle directories to bring to the current format")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.bundles:
        try:
            old, new = migrate_bundle(path)
        except BundleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: bundle {old} is now {new}" if old != new else f"{path}: already current ({new})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
