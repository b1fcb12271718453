"""GEM model code: backbone, connector, depth generator, action experts. Plain torch/transformers/diffusers.

Kept free of heavy imports: `import gem_models` is cheap; import the submodules you need, e.g.
`from gem_models.gem import GemModel` and `from gem_models.config import GemModelConfig`.
"""
