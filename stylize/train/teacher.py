"""Distillation: train the feed-forward network to paint what a WCT model paints (issue 29).

Johnson et al. train the network against a loss network's Gram statistics of the painting. Ours
learned to meet those statistics with a uniform fine hatching (a blind panel preferred the peer 30
of 30 times), and translating the images before the loss network did not take it away. WCT on
reconstruction-only decoders (models/wct.py) paints the painting's own marks over a clear subject
(preferred to the peer's built-in Starry Night 73 of 90 times), but runs two to three times slower
than the network. So the network's target for each training crop is what the WCT model paints from
that crop with the painting, at the example's strength (models/wct.picture, exactly what
`stylize apply --style PAINTING` does), and the loss is TeacherLoss: L1 on the pixels and on the
loss network's features (losses.py). The network then runs at its own speed.
"""
from __future__ import annotations

import numpy as np
import torch

from stylize.errors import StylizeError
from stylize.images import load_style
from stylize.models import modelfile


class Teacher:
    """A WCT model and each style's statistics: crops -> the pictures it paints from them."""

    def __init__(self, model: str, styles: list[str], device: torch.device):
        from stylize.models.wct import WCTNet, colouring
        from stylize.models.whitening import WCTConfig

        record = modelfile.load(modelfile.resolve(model))
        if record.get("kind") != "wct":
            raise StylizeError(f"--teacher {model}: not a WCT model (its kind is {record.get('kind')!r})")
        self.net = modelfile.build(record, lambda: WCTNet(WCTConfig(**record["net"])), record["state_dict"])
        self.net.eval().requires_grad_(False).to(device)
        self.name = record.get("path", model)
        # as the WCT engine reads a painting: at the model's style size
        self.targets = []
        for path in styles:
            _, image = load_style(path, self.net.cfg.style_size)
            stats = self.net.style_stats(image[None].to(device))
            self.targets.append({t: colouring(*stats[t]) for t in self.net.taps})

    def __call__(self, x: torch.Tensor, style_index: torch.Tensor, strength: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, H, W) crops in [0, 1], H and W multiples of the model's; per example its style and
        strength -> (B, 3, H, W) the pictures, in [0, 1]."""
        from stylize.models.wct import picture

        out = []
        for i in range(len(x)):
            crop = x[i].detach().mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            s = 1.0 if strength is None else float(strength[i])
            out.append(torch.from_numpy(np.ascontiguousarray(picture(self.net, crop, [self.targets[int(style_index[i])]], s))))
        return torch.stack(out).to(x.device).float().div_(255)
