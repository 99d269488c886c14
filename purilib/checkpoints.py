"""Saving and loading model weights safely.

Checkpoints of suspect models are untrusted input: a pickle can run arbitrary
code when loaded.  purilib writes safetensors and reads either safetensors or a
plain state dict through ``torch.load(..., weights_only=True)``, which refuses
any pickled object that is not a tensor or a plain container.
"""
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class UnsafeCheckpointError(ValueError):
    pass


def save_weights(model_or_state, path) -> None:
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(partial))
    partial.replace(path)  # atomic: an interrupt never leaves a truncated checkpoint


def load_weights(path) -> dict:
    """A state dict from a ``.safetensors`` file or a plain ``torch.save``d state dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"'{path}' holds pickled objects other than tensors; refusing to load it "
            f"(it could run code). Re-save it as a plain state dict or safetensors. ({error})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeCheckpointError(f"'{path}' is not a state dict of tensors")
    return state


def load_model(model: torch.nn.Module, path) -> torch.nn.Module:
    model.load_state_dict(load_weights(path))
    return model
