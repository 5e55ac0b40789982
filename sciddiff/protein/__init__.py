"""sciddiff.protein: protein backbone generation by flow matching on residue frames (R^3 x SO(3) per residue).

Modules (one concept each): ``geometry`` (frames <-> N/CA/C/O, dihedrals), ``pdbio`` (PDB in/out), ``data`` (manifest,
sequence-cluster split, the one-file training set), ``model`` (the SE(3)-equivariant frame denoiser), ``frameflow`` (loss and
sampler on the core's flow matching), ``train`` (resumable training, runs without biopython), ``pretrained`` (checkpoint
loading), ``ramachandran`` and ``metrics`` (backbone quality), ``evaluate`` (folder-level evaluation and plots), ``cli``
(`sciddiff backbone ...`). Units: Angstrom and radians at the API; model translations are Angstrom / 10. See docs/protein.md.
Importing this package imports nothing heavy.
"""
