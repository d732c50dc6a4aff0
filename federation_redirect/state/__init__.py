"""Shared state between replicas: the StateStore interface and its implementations."""

from .base import AuditEntry, Override, OverrideChange, StateStore, StoreUnavailable

__all__ = ["AuditEntry", "Override", "OverrideChange", "StateStore", "StoreUnavailable"]
