"""A published style model ready to serve: loaded once, run on batches, checked for health. No Ray."""

from __future__ import annotations

from collections import defaultdict

import torch

from factory import registry


class StyleModel:
    def __init__(self, registry_uri: str, style: str, version: str, device: torch.device | None = None):
        net, self.metadata = registry.load_model(registry_uri, style, version)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = net.to(self.device).eval()

    def forward_by_size(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """(3, H, W) tensors in 0..255 -> stylised, in order; those of one size run as one batch."""
        groups = defaultdict(list)
        for index, tensor in enumerate(tensors):
            groups[tuple(tensor.shape)].append(index)
        outputs: list[torch.Tensor] = [None] * len(tensors)
        with torch.inference_mode():
            for indices in groups.values():
                batch = torch.stack([tensors[i] for i in indices]).to(self.device)
                for index, result in zip(indices, self.net(batch).cpu()):
                    outputs[index] = result
        return outputs

    def check_health(self) -> None:
        """Raises when the model cannot produce a usable image (for example NaN weights)."""
        with torch.inference_mode():
            output = self.net(torch.full((1, 3, 16, 16), 128.0, device=self.device))
        if not torch.isfinite(output).all():
            raise RuntimeError(f"model {self.metadata['style']} produces non-finite output")
