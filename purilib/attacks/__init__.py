"""Attack registry: ``create_attack(name, **kwargs)``.

Names are the ones the papers' tables use.  ``Benign`` is no attack (the
clean-model row).  Append ``-all`` / pass ``mode='all2all'`` for all-to-all.
"""
from .badnets import BadNets
from .base import Attack
from .blend import Blend

ATTACKS = {"BadNets": BadNets, "Blend": Blend}
BENIGN = "Benign"
__all__ = ["ATTACKS", "BENIGN", "Attack", "BadNets", "Blend", "create_attack"]


def create_attack(name: str, **kwargs):
    """Return an :class:`Attack`, or ``None`` for ``'Benign'`` (no attack)."""
    if name == BENIGN:
        return None
    if name.endswith("-all"):
        name, kwargs = name[:-4], {**kwargs, "mode": "all2all"}
    if name not in ATTACKS:
        raise ValueError(f"unknown attack '{name}'; choose one of {sorted(ATTACKS) + [BENIGN]}")
    return ATTACKS[name](**kwargs)
