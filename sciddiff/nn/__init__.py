"""Network building blocks shared by the applications.

- `embeddings`: sinusoidal (DDPM convention) and Gaussian Fourier time / noise-level embeddings; `floored_exp` for
  Gaussian bases (float32 exp's slow underflow path avoided).
- `graph`: exact pure-torch `radius_graph`, `knn_graph`, `radius`, `knn` with PyG's conventions (pyg-lib is not installable),
  `knn_graph_dense` for batches of many small contiguous examples (protein chains), and per-node `segment_mean` /
  `segment_softmax` of edge messages.
- `unet1d`: Diffusion Policy's conditional 1D U-Net (FiLM conditioning).
- `vision`: a small ResNet image encoder (GroupNorm, spatial softmax) for image-conditioned policies.
"""
