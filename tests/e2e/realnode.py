"""The real node as the e2e tier sees it: the images imported into its containerd, its name, and the host
directories behind the PersistentVolumes of the tiny model and the model cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hack.localcluster.images import Images


@dataclass(frozen=True)
class RealNodeWorld:
    images: Images
    node_name: str
    model_root: Path
    volumes_root: Path

    def cache_root(self, namespace: str) -> Path:
        return self.volumes_root / "cache" / namespace
