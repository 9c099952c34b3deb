"""Copy a pre-fetched model cache onto every node of the cluster, once, before any actor starts.

``vidflow models download --to DIR`` leaves ``DIR/hub`` (Hugging Face cache layout) and
``DIR/torch/hub`` (torch.hub's dir). A job with ``run.model_cache_url: URL`` (DIR itself or a copy
of it on object storage) calls :func:`stage_model_cache` right after Ray is up: one Ray task per
alive node (``NodeAffinitySchedulingStrategy``, ``num_cpus=0`` so a head that schedules no work
gets one too) merges the cache into that node's own Hugging Face cache and torch.hub dir — the
folders its workers read, as that node's environment (``HF_HOME``/``HF_HUB_CACHE``/``TORCH_HOME``)
says — so N actors never race N downloads, and with ``HF_HUB_OFFLINE=1`` nothing touches the
network. A node that already holds this exact cache (same file names, sizes and version stamps)
skips the copy; files are written atomically, so two jobs staging at once cannot tear a file.
Nodes that join later (autoscaling) are not staged: bake the cache into the image or the node's
setup commands for those.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
from typing import Any

from pipeline import storage
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)

HF_PART = "hub"  # {cache}/hub: the Hugging Face cache (models--org--name/...)
TORCH_PART = "torch/hub"  # {cache}/torch/hub: torch.hub's dir (repos, checkpoints/)
MARKER_DIR = ".vidflow-staged"


def node_cache_dirs() -> tuple[str, str]:
    """This process's Hugging Face cache and torch.hub dir (what from_pretrained / torch.hub.load use)."""
    try:
        from huggingface_hub import constants

        hf = constants.HF_HUB_CACHE
    except ImportError:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
        hf = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
    import torch

    return hf, torch.hub.get_dir()


def _listing(url: str, options: StorageOptions | None) -> dict[str, tuple[Any, str]]:
    """``relative path -> (size, version stamp)`` of every file under ``url`` ({} when absent)."""
    fs, root = storage.get_fs(url, options)
    if not fs.exists(root):
        return {}
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    out = {}
    for path, info in found.items():
        if info.get("type", "file") == "directory":
            continue
        stamp = next((str(info[k]) for k in ("ETag", "etag", "mtime", "LastModified") if info.get(k)), "")
        out[os.path.relpath(path, root)] = (info.get("size"), stamp)
    return out


def _copy_tree(url: str, dest: str, files: dict[str, tuple[Any, str]], options: StorageOptions | None) -> int:
    """Merge the files under ``url`` into ``dest``; returns how many were copied (same-size files are kept).

    A local source keeps its relative symlinks (the HF cache's snapshots point into ``blobs/``).
    """
    fs, root = storage.get_fs(url, options)
    root = root.rstrip("/")
    local = storage.protocol_of(url) == "file"
    copied = 0
    for rel, (size, _) in sorted(files.items()):
        target = os.path.join(dest, rel)
        source = os.path.join(root, rel)
        if local and os.path.islink(source):
            link = os.readlink(source)
            if not os.path.isabs(link) and not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.symlink(link, target)
                copied += 1
                continue
        if os.path.isfile(target) and size is not None and os.path.getsize(target) == size:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
        os.close(fd)
        try:
            fs.get_file(source, tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        copied += 1
    return copied


def stage_on_this_node(url: str, options: StorageOptions | None = None, hf_cache: str | None = None,
                       torch_hub: str | None = None) -> dict[str, Any]:
    """Merge ``{url}/hub`` and ``{url}/torch/hub`` into this node's caches (or the given folders), once.

    Returns ``{"node", "hf_cache", "torch_hub", "copied", "skipped"}``. Raises FileNotFoundError when
    ``url`` holds neither part.
    """
    default_hf, default_torch = (hf_cache, torch_hub) if hf_cache and torch_hub else node_cache_dirs()
    hf_cache, torch_hub = hf_cache or default_hf, torch_hub or default_torch
    parts = [(storage.join_url(url, *p.split("/")), dest) for p, dest in ((HF_PART, hf_cache), (TORCH_PART, torch_hub))]
    listings = [_listing(src, options) for src, _ in parts]
    if not any(listings):
        raise FileNotFoundError(f"model cache {url!r} holds neither {HF_PART}/ nor {TORCH_PART}/ on node "
                                f"{socket.gethostname()} (make it with `vidflow models download --to DIR`; a local "
                                "path must exist on every node: use a shared disk or object storage)")
    digest = hashlib.sha256(repr((url, [sorted(x.items()) for x in listings])).encode()).hexdigest()[:16]
    marker = os.path.join(os.path.dirname(os.path.abspath(hf_cache)), MARKER_DIR, digest)  # beside the HF cache
    result = {"node": socket.gethostname(), "hf_cache": hf_cache, "torch_hub": torch_hub, "copied": 0,
              "skipped": os.path.exists(marker)}
    if result["skipped"]:
        return result
    for (src, dest), files in zip(parts, listings):
        if files:
            result["copied"] += _copy_tree(src, dest, files, options)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as handle:
        handle.write(url)
    return result


def stage_model_cache(url: str, options: StorageOptions | None = None, *, hf_cache: str | None = None,
                      torch_hub: str | None = None) -> list[dict[str, Any]]:
    """Run :func:`stage_on_this_node` once on every alive Ray node; returns each node's result.

    ``hf_cache``/``torch_hub`` override the destination on every node (default: each node's own).
    Raises the first node's error (e.g. FileNotFoundError for a cache without ``hub/``).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    url = os.path.abspath(os.path.expanduser(url)) if storage.protocol_of(url) == "file" and \
        not url.startswith("file://") else url
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    task = ray.remote(num_cpus=0, max_retries=2)(stage_on_this_node)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(url, options, hf_cache, torch_hub) for n in nodes]
    results = ray.get(refs)
    for res in results:
        log.info("model cache %s on %s: %s (%d files copied) -> %s, %s", url, res["node"],
                 "already staged" if res["skipped"] else "staged", res["copied"], res["hf_cache"], res["torch_hub"])
    return results

