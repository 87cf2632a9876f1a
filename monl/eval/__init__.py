"""Evaluation metrics: Fréchet/kernel distances, I3D video features, latent-space proxies.

Kept light on purpose: `import monl.eval` loads no network weights and no optional packages.
Import the submodules (`monl.eval.metrics`, `monl.eval.i3d`, `monl.eval.plugins`,
`monl.eval.latent_fd`) for the functionality.
"""

from monl.eval.metrics import FeatureStats, frechet_distance, kernel_distance

__all__ = ["FeatureStats", "frechet_distance", "kernel_distance"]
