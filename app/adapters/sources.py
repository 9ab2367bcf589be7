"""Where adapters come from: a local directory under an allowed root, the Hugging Face Hub, or S3.

Each source turns an adapter id into a local directory holding a PEFT adapter
(``adapter_config.json`` + weights), plus a fingerprint of those files, so that the registry never
gives one integer id to two different sets of weights. Downloads go through ``huggingface_hub``
(its standard cache, revisions, tokens, ``HF_HUB_OFFLINE``) and ``boto3`` (any S3-compatible
endpoint). Error messages never contain server paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import msgspec

from app.errors import AdapterForbiddenError, AdapterLoadError, ModelNotFoundError

SOURCES = ("local", "hub", "s3")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class FetchedAdapter(msgspec.Struct, frozen=True, kw_only=True):
    """A local copy of an adapter: ``path`` (absolute directory) and ``fingerprint`` (hex digest
    of the adapter files' names, sizes and modification times; changes when the weights do)."""

    path: str
    fingerprint: str


def fingerprint(directory: str | os.PathLike) -> str:
    """Digest of the adapter files in ``directory`` (names, sizes, mtimes). Raises
    ``FileNotFoundError`` when there is no ``adapter_config.json``."""
    d = Path(directory)
    if not (d / "adapter_config.json").is_file():
        raise FileNotFoundError("adapter_config.json")
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        f = d / name
        if f.is_file():
            st = f.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:32]


class AdapterSources:
    """Fetches adapters by ``(source, adapter id, revision)``.

    ``roots``: directories under which ``local`` adapters may live (none: local loading refused);
    ``cache_dir``: where S3 downloads are kept; ``s3_endpoint_url``: for S3-compatible stores
    (else boto3's own configuration, e.g. ``AWS_ENDPOINT_URL``); ``hf_token``: the server's Hub
    token (a request's ``api_token`` wins)."""

    def __init__(
        self,
        *,
        roots: tuple[str, ...] = (),
        cache_dir: str | os.PathLike,
        s3_endpoint_url: str | None = None,
        hf_token: str | None = None,
    ) -> None:
        self.roots = tuple(os.path.realpath(r) for r in roots)
        self.cache_dir = Path(cache_dir)
        self.s3_endpoint_url = s3_endpoint_url
        self.hf_token = hf_token

    async def fetch(self, source: str, adapter_id: str, *, revision: str | None = None,
                    api_token: str | None = None) -> FetchedAdapter:
        """A local copy of the adapter. Raises :class:`ModelNotFoundError` (nothing there),
        :class:`AdapterForbiddenError` (a path outside the allowed roots) or
        :class:`AdapterLoadError` (any other failure, e.g. the store is unreachable)."""
        if source == "local":
            return self.local(adapter_id)
        if source == "hub":
            return await asyncio.to_thread(self._hub, adapter_id, revision, api_token)
        if source == "s3":
            return await asyncio.to_thread(self._s3, adapter_id)
        raise AdapterLoadError(
            f"Adapter source `{source}` is not supported; use one of: {', '.join(SOURCES)}.", param="adapter_source"
        )

    # -- local -----------------------------------------------------------------------------

    def local(self, adapter_id: str) -> FetchedAdapter:
        """An adapter directory under one of the roots: an absolute path, or a path relative to a
        root. ``..`` and symlinks are resolved first, so neither can leave a root."""
        if not self.roots:
            raise AdapterForbiddenError("Local adapters are not enabled on this server (see --adapter-root).")
        candidates = [adapter_id] if os.path.isabs(adapter_id) else [os.path.join(r, adapter_id) for r in self.roots]
        inside_a_root = False
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if not any(os.path.commonpath([real, root]) == root for root in self.roots):
                continue
            inside_a_root = True
            if os.path.isfile(os.path.join(real, "adapter_config.json")):
                return FetchedAdapter(path=real, fingerprint=fingerprint(real))
        if not inside_a_root:
            raise AdapterForbiddenError(f"Adapter `{adapter_id}` is outside the adapter roots this server allows.")
        raise ModelNotFoundError(adapter_id)

    # -- Hugging Face Hub ------------------------------------------------------------------

    def _hub(self, repo_id: str, revision: str | None, api_token: str | None) -> FetchedAdapter:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if not _REPO_ID.match(repo_id):
            raise ModelNotFoundError(repo_id)
        try:
            path = snapshot_download(
                repo_id,
                revision=revision,
                token=api_token or self.hf_token,
                allow_patterns=list(ADAPTER_FILES),
            )
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, LocalEntryNotFoundError,
                HFValidationError) as exc:
            raise ModelNotFoundError(repo_id) from exc
        except GatedRepoError as exc:
            raise AdapterForbiddenError(f"Adapter `{repo_id}` is gated; pass a token that has access.") from exc
        except Exception as exc:
            raise AdapterLoadError(f"Adapter `{repo_id}` could not be downloaded from the Hub.") from exc
        try:
            # The snapshot directory name is the commit hash: the revision really served.
            return FetchedAdapter(path=path, fingerprint=f"{Path(path).name}-{fingerprint(path)}")
        except FileNotFoundError as exc:
            raise ModelNotFoundError(repo_id) from exc

    # -- S3 --------------------------------------------------------------------------------

    def _s3(self, uri: str) -> FetchedAdapter:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not bucket:
            raise ModelNotFoundError(uri)
        client = boto3.client("s3", endpoint_url=self.s3_endpoint_url)
        key_prefix = f"{prefix}/" if prefix else ""
        target = self.cache_dir / "s3" / bucket / (prefix or "_root")
        try:
            wanted = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(key_prefix):]
                    if name in ADAPTER_FILES:
                        wanted[name] = (obj["Key"], obj.get("ETag", ""), obj.get("Size", 0))
            if "adapter_config.json" not in wanted:
                raise ModelNotFoundError(uri)
            target.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            for name, (key, etag, size) in sorted(wanted.items()):
                h.update(f"{name}:{etag}:{size};".encode())
                tmp = target / f".{name}.part"
                client.download_file(bucket, key, str(tmp))
                os.replace(tmp, target / name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "NoSuchKey", "404"):
                raise ModelNotFoundError(uri) from exc
            if code in ("AccessDenied", "403"):
                raise AdapterForbiddenError(f"Access to adapter `{uri}` was denied by the store.") from exc
            raise AdapterLoadError(f"Adapter `{uri}` could not be downloaded from S3 ({code or 'error'}).") from exc
        except BotoCoreError as exc:
            raise AdapterLoadError(f"Adapter `{uri}` could not be downloaded from S3.") from exc
        return FetchedAdapter(path=str(target), fingerprint=h.hexdigest()[:32])
