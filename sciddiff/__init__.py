"""sciddiff: a scientific diffusion toolkit.

`sciddiff.core` is the domain-agnostic diffusion core (R^n, SO(3), torus, products); `sciddiff.nn` and `sciddiff.train`
hold shared network and training building blocks; `sciddiff.dock`, `sciddiff.protein` and `sciddiff.policy` are the
applications, each depending on the core and the shared modules but never on one another.
"""

__version__ = "0.1.0"
