"""Adapters: where they come from (:mod:`.sources`), how they are checked (:mod:`.peft_config`),
merged (:mod:`.merge`) and kept ready for the engine (:mod:`.registry`)."""

from app.adapters.registry import AdapterEntry, AdapterRegistry

__all__ = ["AdapterEntry", "AdapterRegistry"]
