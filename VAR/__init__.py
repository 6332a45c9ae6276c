"""VAR family: multi-scale VQVAE, VAR transformer, static-cache sampler, data and trainer adapter.

    from VAR import VQVAE, VAR, build_vae_var
"""
from .build import build_tiny_vae_var, build_vae, build_vae_var, build_var, load_vae_weights, load_var_weights
from .quant import MultiScaleQuantizer, VectorQuantizer2
from .var import VAR
from .vqvae import VQVAE

__all__ = ["VQVAE", "VAR", "build_vae_var", "build_vae", "build_var", "load_vae_weights", "load_var_weights",
           "MultiScaleQuantizer", "VectorQuantizer2"]
