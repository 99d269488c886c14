"""Defense registry: ``create_defense(name, **overrides)`` and ``purify(...)``.

Names are the ones the papers' tables use.  ``No defense`` is the identity.
"""
from .base import Defense
from .ft import FineTuning
from .nft import NFT

DEFENSES = {"FT": FineTuning, "NFT": NFT}
NO_DEFENSE = "No defense"
__all__ = ["DEFENSES", "NO_DEFENSE", "Defense", "FineTuning", "NFT", "create_defense", "purify"]


def create_defense(name: str, **kwargs) -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense '{name}'; choose one of {sorted(DEFENSES)}")
    return DEFENSES[name](**kwargs)


def purify(model, clean_data, method="NFT", device="auto", bf16=False, seed=0, progress=True, **overrides):
    """Purify ``model`` with ``clean_data`` (an ImageSet); return a new model.
    ``overrides`` change the method's defaults (see its module's ``DEFAULTS``)."""
    defense = create_defense(method, device=device, bf16=bf16, seed=seed, progress=progress, **overrides)
    return defense.purify(model, clean_data)
