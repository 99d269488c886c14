"""Saving and loading model weights safely.

Checkpoints of suspect models are untrusted input: a pickle can run arbitrary
code when loaded.  purilib writes safetensors and reads either safetensors or a
plain state dict through ``torch.load(..., weights_only=True)``, which refuses
any pickled object that is not a tensor or a plain container.
"""
import hashlib
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class UnsafeCheckpointError(ValueError):
    pass


def weights_digest(model_or_state) -> str:
    """A digest of the weights themselves (every tensor's bytes, by name): two models share it only
    if they compute the same function, whatever configuration made them."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def save_weights(model_or_state, path) -> None:
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(partial))
    partial.replace(path)  # atomic: an interrupt never leaves a truncated checkpoint


class CheckpointError(ValueError):
    pass


def load_weights(path) -> dict:
    """A state dict from a ``.safetensors`` file or a plain ``torch.save``d state dict; the common
    third-party wrappings are undone: ``{"model"|"state_dict"|"net": state}`` and the ``module.``
    prefix that DataParallel / DistributedDataParallel add."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as error:  # noqa: BLE001  safetensors raises its own types, without the path
            raise CheckpointError(f"'{path}' is not a readable safetensors file ({error})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise UnsafeCheckpointError(
                f"'{path}' holds pickled objects other than tensors; refusing to load it "
                f"(it could run code). Re-save it as a plain state dict or safetensors. ({error})") from None
        except (RuntimeError, EOFError, OSError) as error:
            raise CheckpointError(f"'{path}' is not a readable torch checkpoint ({error})") from None
        for wrapper in ("state_dict", "model", "net"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeCheckpointError(f"'{path}' is not a state dict of tensors")
    for prefix in ("module.", "_orig_mod."):  # DataParallel / DDP, torch.compile
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_model(model: torch.nn.Module, path, normalization=None) -> torch.nn.Module:
    """Load ``path`` into ``model``.  purilib's models normalise their input themselves (a first
    ``normalize`` layer, CIFAR-10 statistics); a third-party checkpoint has no such buffers: say
    what its inputs were normalised with, ``normalization=(mean, std)`` (per channel, for images in
    [0, 1]), or ``normalization="none"``."""
    state = load_weights(path)
    buffers = [k for k in model.state_dict() if k.endswith(("normalize.mean", "normalize.std"))]
    missing = [k for k in buffers if k not in state]
    if missing:
        if normalization is None:
            raise CheckpointError(
                f"'{path}' has no input normalisation ({', '.join(missing)}): pass normalization=(mean, std), "
                "the per-channel statistics its images were normalised with, or normalization='none'")
        mean, std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if normalization == "none" else normalization
        reference = model.state_dict()
        for key in missing:
            values = mean if key.endswith("mean") else std
            state[key] = torch.as_tensor(values, dtype=reference[key].dtype, device="cpu").view_as(reference[key])
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"'{path}' does not fit this model: {error}") from None
    return model
