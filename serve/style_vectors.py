"""The style vectors of one family version, as a pool replica meets them, and blends of them. No Ray.

A family's model (serve/style_model.py) is its shared network; a style of it is only a vector of
scales and shifts (3,206 numbers at full width, 12.5 KiB; 3,200 for families published before the output conv had its norm), read from the style's own small model.pt
the first time a request names it. A blend is the weighted sum of its styles' vectors (Dumoulin et
al.; the weights need not sum to 1, as in Magenta), so one forward pass carries any mix per image.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from factory import registry

# Vectors kept per family version, least recently used dropped first: 2,048 full-width vectors are
# 25 MiB, so a replica's memory stays bounded however many styles a family grows to.
MAX_VECTORS = 2048


class StyleVectors:
    def __init__(self, registry_uri: str, family: dict, style_size: int, capacity: int = MAX_VECTORS):
        """family: the version's reference ({"name", "version", "model_sha256", ...}), as its styles'
        metadata records it."""
        self.registry_uri, self.family, self.style_size, self.capacity = registry_uri, family, style_size, capacity
        self.vectors: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.lock = threading.Lock()  # requests load vectors from several threads at once

    def blend(self, mix: tuple[tuple[str, str, float], ...]) -> torch.Tensor:
        """(style_size,): the sum of weight * vector over mix's (style, version, weight). Reads the
        registry for vectors not held yet (call it off the event loop): registry.ModelNotFound when a
        version is gone, ValueError when it is not a style of this family version."""
        if not mix:
            raise ValueError(f"no style named for family {self.family['name']!r}: a family's model needs a style or a blend")
        return sum(weight * self.vector(style, version) for style, version, weight in mix)

    def vector(self, style: str, version: str) -> torch.Tensor:
        key = (style, version)
        with self.lock:
            if key in self.vectors:
                self.vectors.move_to_end(key)
                return self.vectors[key]
        vector = self._read(style, version)
        with self.lock:
            self.vectors[key] = vector
            while len(self.vectors) > self.capacity:
                self.vectors.popitem(last=False)
        return vector

    def _read(self, style: str, version: str) -> torch.Tensor:
        metadata = registry.read_metadata(self.registry_uri, style, version)
        recorded = metadata.get("family") or {}
        # The model sha256 too: a family re-published under the same version name must not mix with this one.
        if [recorded.get(key) for key in ("name", "version", "model_sha256")] != [self.family[key] for key in ("name", "version", "model_sha256")]:
            raise ValueError(f"style {style!r} version {version} is not a style of family {self.family['name']!r} "
                             f"version {self.family['version']} (its metadata records {recorded.get('name')!r} {recorded.get('version')})")
        vector = registry.load_style_vector(self.registry_uri, metadata).float()
        if vector.shape != (self.style_size,):
            raise ValueError(f"style {style!r} version {version}: its vector has shape {tuple(vector.shape)}, "
                             f"its family's network takes ({self.style_size},)")
        return vector
