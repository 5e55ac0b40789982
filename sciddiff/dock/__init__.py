"""DiffDock-style docking: reverse diffusion over ligand poses on R^3 x SO(3) x T^m plus a Vina-family physics search.

Entry points: `sciddiff dock` / `sciddiff dock-eval` (cli.py), `sciddiff.dock.docking.dock` (the pipeline),
`python -m sciddiff.dock.data` (preprocessing) and `python -m sciddiff.dock.train` (score-model training).
See docs/dock.md. Units: Angstrom and radians throughout.
"""
