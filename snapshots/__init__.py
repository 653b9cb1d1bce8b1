"""Snapshots of the ledger state at an LSN (the snapshots issue fills this package in).

Stores bytes the ledger encoded; never imports ``ledger``."""

__all__: list[str] = []
