"""LlamaGen family: VQ tokenizer, class- and text-conditional GPT (``Caption`` conditions), static-cache
generation, code and T5 feature extraction and the CCA trainer adapter. ``Transformer(ModelArgs(...))`` builds any
size; ``GPT_models[name](**kwargs)`` the registered ones.
"""
from LlamaGen.captions import Caption
from LlamaGen.generate import generate
from LlamaGen.gpt import GPT_SIZES, GPT_models, KVCache, ModelArgs, Transformer
from LlamaGen.vq_model import VQ_models, VQModel, VQModelArgs

__all__ = ["Caption", "Transformer", "ModelArgs", "GPT_models", "GPT_SIZES", "KVCache", "VQ_models", "VQModel", "VQModelArgs",
           "generate"]
