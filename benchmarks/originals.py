"""The original VAR / LlamaGen / CCA code, imported at run time from a folder the user names (nothing of it is ever
stored in this repository), with the stand-ins it needs to run in one CPU process next to ours.

The folder is laid out as thu-ml/CCA pins it: ``VAR_CCA_trainer.py`` and ``LlamaGen_finetune.py`` at the top,
``VAR/`` (FoundationVision/VAR) and ``LlamaGen/`` (FoundationVision/LlamaGen) inside. What is used from it:

  VAR/models (VQVAE, VAR), VAR/models/basic_vae (Encoder, Decoder), VAR/dist.py, VAR/utils/amp_sc.py (AmpOptimizer),
  VAR_CCA_trainer.py (VAR_CCATrainer);
  LlamaGen/autoregressive/models/gpt.py (Transformer, ModelArgs), .../generate.py (generate),
  LlamaGen/tokenizer/tokenizer_image/vq_model.py (VQModel, ModelArgs, Encoder, Decoder),
  LlamaGen_finetune.py (creat_optimizer and the body of its ``for x, y in loader`` training loop).

Stand-ins set up here: VAR's logging module (``utils/misc.py`` needs pytz and the Tap argument parser) is replaced by
no-op loggers; our package ``VAR`` shadows the original's top-level folder name, so ``VAR.models`` / ``VAR.utils.*``
are registered for the duration of the trainer's import; LlamaGen's training loop lives inside ``main()`` (which needs
CUDA, DDP and a dataset), so its loop body is compiled at run time into a function of one batch.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import sys
import types
from pathlib import Path

REQUIRED = {"var": ("VAR/models/__init__.py", "VAR/models/basic_vae.py", "VAR/dist.py", "VAR/utils/amp_sc.py",
                    "VAR_CCA_trainer.py"),
            "llamagen": ("LlamaGen/autoregressive/models/gpt.py", "LlamaGen/autoregressive/models/generate.py",
                         "LlamaGen/tokenizer/tokenizer_image/vq_model.py", "LlamaGen_finetune.py")}


def check_root(root: str | Path, family: str) -> Path:
    """The originals' folder, or a ValueError naming --original-root and the first file that is missing."""
    root = Path(root).expanduser().resolve()
    for rel in REQUIRED[family]:
        if not (root / rel).is_file():
            raise ValueError(f"--original-root {root}: expected the original release as thu-ml/CCA pins it "
                             f"(VAR/ and LlamaGen/ inside); {rel} is missing")
    return root


@contextlib.contextmanager
def _sys_path(*paths: Path):
    """Put ``paths`` first on sys.path; afterwards sys.path is exactly what it was (the originals append to it)."""
    saved = list(sys.path)
    sys.path[:0] = [str(p) for p in paths]
    try:
        yield
    finally:
        sys.path[:] = saved


@contextlib.contextmanager
def _registered(modules: dict[str, types.ModuleType]):
    """Register ``modules`` in sys.modules for the block, then put back whatever was there."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _module_from_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []          # a package, so submodules can be registered under it
    module.__dict__.update(attrs)
    return module


class _NoOpLogger:
    """Stands in for VAR's MetricLogger / TensorboardLogger: accepts every call, records nothing."""
    log_iters: frozenset = frozenset()

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def quiet():
    """The originals print banners from constructors; keep them out of the benchmark's table."""
    return contextlib.redirect_stdout(io.StringIO())


def load_var(root: Path) -> types.SimpleNamespace:
    """The original VAR modules and the CCA trainer class, imported from ``root``."""
    with _sys_path(root / "VAR"), quiet():
        dist = importlib.import_module("dist")
        models = importlib.import_module("models")
        basic_vae = importlib.import_module("models.basic_vae")
        amp_sc = _module_from_file(root / "VAR/utils/amp_sc.py", "_original_var_amp_sc")
        misc = types.ModuleType("VAR.utils.misc")
        misc.MetricLogger = misc.TensorboardLogger = _NoOpLogger
        stand_ins = {"dist": dist, "VAR.models": models, "VAR.utils": _package("VAR.utils", amp_sc=amp_sc, misc=misc),
                     "VAR.utils.amp_sc": amp_sc, "VAR.utils.misc": misc}
        with _registered(stand_ins):
            trainer = _module_from_file(root / "VAR_CCA_trainer.py", "_original_VAR_CCA_trainer")
    return types.SimpleNamespace(models=models, basic_vae=basic_vae, dist=dist, AmpOptimizer=amp_sc.AmpOptimizer,
                                 VAR_CCATrainer=trainer.VAR_CCATrainer, metric_logger=_NoOpLogger())


def load_llamagen(root: Path) -> types.SimpleNamespace:
    """The original LlamaGen GPT, generate and VQ model, and LlamaGen_finetune.py's optimizer and step."""
    with _sys_path(root / "LlamaGen"), quiet():
        gpt = importlib.import_module("autoregressive.models.gpt")
        generate = importlib.import_module("autoregressive.models.generate")
        vq = importlib.import_module("tokenizer.tokenizer_image.vq_model")
    finetune = finetune_functions(root / "LlamaGen_finetune.py")
    return types.SimpleNamespace(gpt=gpt, generate=generate.generate, vq=vq, **finetune)


# ------------------------------------------------------------------------------ LlamaGen_finetune.py at run time
def _loop_over_loader(tree: ast.Module) -> ast.For:
    for node in ast.walk(tree):
        if (isinstance(node, ast.For) and isinstance(node.iter, ast.Name) and node.iter.id == "loader"
                and isinstance(node.target, ast.Tuple) and len(node.target.elts) == 2):
            return node
    raise ValueError("LlamaGen_finetune.py: no `for x, y in loader:` training loop found")


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _names_used(statements: list[ast.stmt]) -> list[str]:
    return sorted({n.id for stmt in statements for n in ast.walk(stmt) if isinstance(n, ast.Name)})


def finetune_functions(path: Path) -> dict:
    """``creat_optimizer`` as the file defines it, and ``cca_step(x, y, env)``: the training loop's body for one
    batch, up to the optimizer step (it stops at the first statement that touches ``running_loss``: logging only).
    Every other name the body uses (args, model, ref_model, optimizer, scaler, ptdtype, device, acc_step, ...) is
    read from ``env``. Returns the loss tensor."""
    import builtins
    import inspect

    import torch
    import torch.nn.functional as F
    tree = ast.parse(path.read_text(), filename=str(path))
    optimizer_def = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "creat_optimizer")
    body = []
    for stmt in _loop_over_loader(tree).body:
        if _mentions(stmt, "running_loss"):
            break
        body.append(stmt)
    given = {"x", "y", "env", "torch", "F"} | set(dir(builtins))
    reads = "".join(f"    {n} = env.get({n!r})\n" for n in _names_used(body) if n not in given)
    step_def = ast.parse(f"def cca_step(x, y, env):\n{reads}    for x, y in ((x, y),):\n        pass\n"
                         "    return loss\n").body[0]
    step_def.body[-2].body = body                      # the one-batch for loop (the body may `continue`)
    module = ast.Module(body=[optimizer_def, step_def], type_ignores=[])
    ast.fix_missing_locations(module)
    namespace = {"torch": torch, "F": F, "inspect": inspect}
    exec(compile(module, str(path), "exec"), namespace)
    return {"creat_optimizer": namespace["creat_optimizer"], "cca_step": namespace["cca_step"]}
