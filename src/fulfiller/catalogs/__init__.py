"""Catalogs of masters: local folders, S3-compatible buckets, Google Drive."""
