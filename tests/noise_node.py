"""A node type for the animation agent's tests (``tests.noise_node:AddNoise`` in a graph): a noisier
capture. Adds seeded Gaussian noise to every weight of the ARKit frames passing through, clipped
to 0 .. 1, as a worse phone or poorer light would; ``sigma`` may change while the graph plays."""
from typing import Any

import numpy as np

from runtime import Message, Node, Pad, Param


class AddNoise(Node):
    """Passes ARKit frames on with Gaussian noise of standard deviation ``sigma`` added to the weights."""

    inputs = {"in": Pad("arkit/blendshapes")}
    outputs = {"out": Pad("arkit/blendshapes")}
    params = {
        "sigma": Param(float, 0.0, "standard deviation of the noise, in weight units; 0 = none", min=0.0, max=1.0),
        "seed": Param(int, 0, "seed of the noise"),
    }

    def setup(self) -> None:
        self.rng = np.random.default_rng(self.p.seed)
        self.frames = 0

    def process(self, pad: str, msg: Message) -> Message:
        w = msg.arrays.get("weights")
        if w is not None and self.p.sigma > 0:
            noisy = np.asarray(w, dtype=np.float64) + self.rng.normal(0.0, self.p.sigma, np.shape(w))
            msg.arrays["weights"] = np.clip(noisy, 0.0, 1.0).astype(np.float32)
        self.frames += 1
        return msg

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "sigma": self.p.sigma}
