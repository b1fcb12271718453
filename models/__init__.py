"""GEM model code: backbone, connector, depth generator, action experts. Plain torch/transformers/diffusers."""
