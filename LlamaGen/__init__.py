"""LlamaGen family: VQ tokenizer, class-conditional GPT, static-cache generation, code extraction and the CCA
trainer adapter. ``Transformer(ModelArgs(...))`` builds any size; ``GPT_models[name](**kwargs)`` the registered ones.
"""
from LlamaGen.generate import generate
from LlamaGen.gpt import GPT_SIZES, GPT_models, KVCache, ModelArgs, Transformer
from LlamaGen.vq_model import VQ_models, VQModel, VQModelArgs

__all__ = ["Transformer", "ModelArgs", "GPT_models", "GPT_SIZES", "KVCache", "VQ_models", "VQModel", "VQModelArgs",
           "generate"]
