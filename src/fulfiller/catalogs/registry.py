"""Build a catalog from its config entry.

Backends are imported only when configured, so a local-only deployment never
pays for loading boto3 or Google's client libraries.
"""

from __future__ import annotations

from fulfiller.catalogs.base import Catalog
from fulfiller.config import CatalogConfig


def build_catalog(name: str, cfg: CatalogConfig) -> Catalog:
    """The catalog named ``name`` in the config, as ``cfg`` describes it."""
    if cfg.type == "local":
        from fulfiller.catalogs.local import LocalCatalog

        return LocalCatalog.from_config(name, cfg)
    if cfg.type == "s3":
        from fulfiller.catalogs.s3 import S3Catalog

        return S3Catalog.from_config(name, cfg)
    if cfg.type == "drive":
        from fulfiller.catalogs.drive import DriveCatalog

        return DriveCatalog.from_config(name, cfg)
    raise ValueError(f"catalog {name}: unknown type {cfg.type!r}")
