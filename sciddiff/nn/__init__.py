"""Network building blocks shared by the applications.

- `embeddings`: sinusoidal (DDPM convention) and Gaussian Fourier time / noise-level embeddings.
- `graph`: exact pure-torch `radius_graph`, `knn_graph`, `radius`, `knn` with PyG's conventions (pyg-lib is not installable),
  and `knn_graph_dense` for batches of many small contiguous examples (protein chains).
- `unet1d`: Diffusion Policy's conditional 1D U-Net (FiLM conditioning).
- `vision`: a small ResNet image encoder (GroupNorm, spatial softmax) for image-conditioned policies.
"""
