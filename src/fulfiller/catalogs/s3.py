"""Masters in an S3 bucket, or any S3-compatible store (MinIO, R2) via ``endpoint_url``.

boto3 is synchronous: every call, including each read of a response body, runs
in a worker thread so one slow bucket never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Listing, Master, Source, SourceStream
from fulfiller.config import S3CatalogConfig

# Enough for every job of a process to stream while others list; boto3's
# default of 10 would queue requests behind each other.
MAX_POOL_CONNECTIONS = 32

# A probe lists this many names at most: enough to show the root is there and readable.
PROBE_KEYS = 10

_MD5_HEX = re.compile(r"[0-9a-f]{32}")
# Error codes that say "ask again later" under a 4xx status.
_TRANSIENT_CODES = frozenset({"Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"})
# Wrong credentials or permissions: an operator must fix the config or the policy.
_DENIED_CODES = frozenset(
    {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccountProblem"}
)
# Configuration problems boto3 reports before sending anything.
_PERMANENT_LOCAL_ERRORS = (NoCredentialsError, PartialCredentialsError, ParamValidationError)


class S3Catalog(Catalog):
    """One bucket (under an optional prefix) laid out as the config's ``layout`` says."""

    def __init__(self, name: str, layout: str, bucket: str, prefix: str, client: Any):
        super().__init__(name, layout)
        self.bucket = bucket
        # "masters" and "masters/" both mean the folder; keys are joined with "/".
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client

    @classmethod
    def from_config(cls, name: str, cfg: S3CatalogConfig) -> S3Catalog:
        """The catalog ``cfg`` describes; credentials come from the usual AWS chain."""
        config = Config(
            # One try per call: the engine retries a CatalogUnavailable with its own backoff, within the
            # job's deadline, so throttling is not retried inside a retry.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            connect_timeout=10,
            read_timeout=60,
            # Custom endpoints (MinIO, R2, on-prem) rarely have wildcard DNS for
            # bucket subdomains; all of them accept path-style requests.
            s3={"addressing_style": "path" if cfg.endpoint_url else "auto"},
            # boto3 would otherwise check every download against the object's CRC: a second pass,
            # costing CPU on every byte, over bytes that TLS already protects in transit and that the
            # upload hashes anyway (the contentHash the platform gets is of the bytes it receives).
            response_checksum_validation="when_required",
        )
        # A private session: the default one is shared and not thread-safe.
        client = boto3.session.Session().client(
            "s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url, config=config
        )
        return cls(name, cfg.layout, cfg.bucket, cfg.prefix, client)

    async def list_in(self, folders: list[str]) -> Listing:
        folder = self.prefix + "".join(f"{seg}/" for seg in folders)
        objects, subfolders = await self._call(f"list {folder!r}", self._list_prefix, folder)
        return Listing([self._master(folder + name, objects[name]) for name in sorted(objects)], sorted(subfolders))

    def _list_prefix(self, folder: str) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Objects directly in ``folder`` by name (not those in its subfolders), and the subfolders' names."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=folder, Delimiter="/"
        )
        objects, subfolders = {}, set()
        for page in pages:
            for obj in page.get("Contents", ()):
                name = obj["Key"][len(folder) :]
                if name:  # the empty "folder/" marker some tools create
                    objects[name] = obj
            for common in page.get("CommonPrefixes", ()):
                name = common["Prefix"][len(folder) : -1]
                if name:  # "folder//": an empty segment no layout names
                    subfolders.add(name)
        return objects, subfolders

    async def read_range(self, master: Master, offset: int, length: int) -> bytes:
        """One ranged GET, of the version found (as the streams ask): a measurement is of the bytes delivered."""
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must be >= 0, got {offset} and {length}")
        if length == 0 or offset >= master.size:
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": master.ref,
                                  "Range": f"bytes={offset}-{offset + length - 1}"}
        if master.version:
            kwargs["IfMatch"] = f'"{master.version}"'
        what = f"read {master.object}"
        response = await self._call(what, self._client.get_object, **kwargs)
        return await self._call(what, _read_whole, response["Body"])

    def _master(self, key: str, obj: Mapping[str, Any]) -> Master:
        etag = obj.get("ETag", "").strip('"')
        return Master(
            catalog=self.name,
            object=f"s3://{self.bucket}/{key}",
            name=key.rsplit("/", 1)[-1],
            size=obj["Size"],
            ref=key,
            # A multipart ETag ("<hex>-<parts>") is not the object's MD5.
            md5=etag if _MD5_HEX.fullmatch(etag) else None,
            version=etag or None,
        )

    async def probe(self) -> str:
        """List the top of the catalog (the bucket, under the prefix): proves endpoint, credentials and bucket."""
        page = await self._call("list the root", self._client.list_objects_v2, Bucket=self.bucket,
                                Prefix=self.prefix, Delimiter="/", MaxKeys=PROBE_KEYS)
        count = len(page.get("Contents", ())) + len(page.get("CommonPrefixes", ()))
        return f"s3://{self.bucket}/{self.prefix}: {count}{'+' if page.get('IsTruncated') else ''} items visible"

    def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> SourceStream:
        return SourceStream(lambda: self._open(master, start), chunk_size)

    async def _open(self, master: Master, start: int) -> Source:
        body = await self._get(master, start)
        return _BodySource(body, lambda exc: self._translate(f"read {master.object}", exc))

    async def _get(self, master: Master, start: int) -> Any:
        """The object's StreamingBody from ``start`` to its end, None when ``start`` is past the end."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": master.ref}
        if start:
            # A plain GET for the whole object: "bytes=0-" is a 416 on an empty one.
            kwargs["Range"] = f"bytes={start}-"
        if master.version:
            # Never splice bytes of a replaced object onto a resumed upload.
            kwargs["IfMatch"] = f'"{master.version}"'
        try:
            response = await self._call(f"get {master.object}", self._client.get_object, **kwargs)
        except CatalogError as exc:
            if _code(exc.__cause__) == "InvalidRange":
                return None
            raise
        return response["Body"]

    async def _call(self, what: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn`` in a worker thread, its boto errors turned into catalog errors."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(what, exc) from exc

    def _translate(self, what: str, exc: ClientError | BotoCoreError) -> CatalogError | CatalogUnavailable:
        where = f"catalog {self.name}: {what} in bucket {self.bucket!r}"
        if isinstance(exc, _PERMANENT_LOCAL_ERRORS):
            return CatalogError(f"{where}: {exc}")
        if not isinstance(exc, ClientError):
            # Connection refused or cut, timeouts, truncated bodies: the network's fault.
            return CatalogUnavailable(f"{where}: {exc}")
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket":
            return CatalogError(f"{where}: the bucket does not exist")
        if code in _DENIED_CODES:
            return CatalogError(f"{where}: access denied ({code}); check the credentials and the bucket policy")
        if code == "NoSuchKey":
            return CatalogError(f"{where}: object vanished since it was listed")
        if code == "PreconditionFailed":
            # Replaced since it was listed: finding it again gives the new version.
            return CatalogUnavailable(f"{where}: object changed since it was listed")
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return CatalogUnavailable(f"{where}: {code or status}")
        return CatalogError(f"{where}: {code or status}: {exc}")

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)


class _BodySource(Source):
    """botocore's stream of one GET (None: the range starts past the end), copied into the reader's buffer.

    Its reads come from urllib3 whole (up to the buffer's length), and it checks
    the length the response announced when it ends.
    """

    def __init__(self, body: Any, translate: Callable[[ClientError | BotoCoreError], Exception]):
        self._body = body
        self._translate = translate

    def readinto(self, buffer: memoryview) -> int:
        if self._body is None:
            return 0
        try:
            data = self._body.read(len(buffer))
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()


def _code(exc: BaseException | None) -> str:
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""


def _read_whole(body: Any) -> bytes:
    """A ranged GET's body (as long as the range at most), read and closed."""
    try:
        return body.read()
    finally:
        body.close()
