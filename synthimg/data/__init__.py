"""Shards, manifests and loaders: the formats every stage exchanges (see ``conventions.md``)."""

from synthimg.data.loader import SkipStats, dataset_size, shard_loader, shard_pipeline
from synthimg.data.manifest import read_keys, read_manifest, write_keys
from synthimg.data.shards import (
    ShardWriter,
    finalize,
    list_shards,
    sample_key,
    shard_name,
    write_shard,
)

__all__ = [
    "ShardWriter",
    "SkipStats",
    "dataset_size",
    "finalize",
    "list_shards",
    "read_keys",
    "read_manifest",
    "sample_key",
    "shard_loader",
    "shard_name",
    "shard_pipeline",
    "write_keys",
    "write_shard",
]
