"""Shared state: one protocol (:class:`Store`), three backends (memory, SQLite, Redis)."""

from .base import BucketResult, Store, StoreUnavailable, open_store

__all__ = ["Store", "StoreUnavailable", "BucketResult", "open_store"]
