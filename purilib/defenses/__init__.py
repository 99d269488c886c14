"""Defense registry: ``create_defense(name, **overrides)`` and ``purify(...)``.

Names are the ones the papers' tables use.  ``No defense`` is the identity.
"""
from .anp import ANP
from .awm import AWM
from .base import Defense
from .fast_fip import FastFIP
from .fip import FIP
from .fp import FinePruning
from .ft import FineTuning
from .ft_sam import FTSAM
from .ibau import IBAU
from .nad import NAD
from .nft import NFT
from .ngf import NGF
from .rnp import RNP

DEFENSES = {"NGF": NGF, "AWM": AWM, "ANP": ANP, "RNP": RNP, "FP": FinePruning, "FT": FineTuning, "NFT": NFT,
            "I-BAU": IBAU, "FT-SAM": FTSAM, "NAD": NAD,
            "FIP": FIP, "Fast FIP": FastFIP}
NO_DEFENSE = "No defense"
__all__ = ["ANP", "AWM", "DEFENSES", "FIP", "FTSAM", "IBAU", "NAD", "NFT", "NGF", "NO_DEFENSE", "RNP", "Defense",
           "FastFIP", "FinePruning", "FineTuning", "create_defense", "purify"]


def create_defense(name: str, **kwargs) -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense '{name}'; choose one of {sorted(DEFENSES)}")
    return DEFENSES[name](**kwargs)


def purify(model, clean_data, method="NFT", device="auto", bf16=False, seed=0, progress=True, **overrides):
    """Purify ``model`` with ``clean_data`` (an ImageSet); return a new model.
    ``overrides`` change the method's defaults (see its module's ``DEFAULTS``)."""
    defense = create_defense(method, device=device, bf16=bf16, seed=seed, progress=progress, **overrides)
    return defense.purify(model, clean_data)
