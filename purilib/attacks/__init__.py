"""Attack registry: ``create_attack(name, **kwargs)``.

Names are the ones the papers' tables use.  ``Benign`` is no attack (the
clean-model row).  Append ``-all`` / pass ``mode='all2all'`` for all-to-all;
the NFT table's ``Troj-one`` / ``Dyn-all`` style names are aliases.
"""
from .badnets import BadNets
from .base import Attack, AttackContext
from .blend import Blend
from .bppa import BPPA
from .cba import CBA
from .clb import CLB
from .dynamic import InputAwareDynamic
from .fba import FBA
from .issba import ISSBA
from .lira import LIRA
from .sig import SIG
from .trojannn import TrojanNN
from .wanet import WaNet

ATTACKS = {"BadNets": BadNets, "Blend": Blend, "SIG": SIG, "CBA": CBA, "WaNet": WaNet, "BPPA": BPPA,
           "TrojanNN": TrojanNN, "CLB": CLB, "ISSBA": ISSBA,
           "Dynamic": InputAwareDynamic, "LIRA": LIRA, "FBA": FBA}
# table name -> (registered attack, label mapping)
ALIASES = {"Troj-one": ("TrojanNN", "all2one"), "Troj-all": ("TrojanNN", "all2all"),
           "Dyn-one": ("Dynamic", "all2one"), "Dyn-all": ("Dynamic", "all2all")}
BENIGN = "Benign"
__all__ = ["ALIASES", "ATTACKS", "BENIGN", "BPPA", "CBA", "CLB", "FBA", "ISSBA", "LIRA", "SIG", "Attack",
           "AttackContext", "BadNets", "Blend", "InputAwareDynamic", "TrojanNN", "WaNet", "attack_class",
           "create_attack"]


def _resolve(name: str):
    """(registered name, mode or None) of a table name."""
    if name in ALIASES:
        return ALIASES[name]
    if name.endswith("-all"):
        return name[:-4], "all2all"
    return name, None


def attack_class(name: str):
    """The registered class behind a table name (``None`` for Benign)."""
    if name == BENIGN:
        return None
    base, _ = _resolve(name)
    if base not in ATTACKS:
        known = sorted(ATTACKS) + sorted(ALIASES) + [BENIGN]
        raise ValueError(f"unknown attack '{name}'; choose one of {known} (or '<name>-all')")
    return ATTACKS[base]


def create_attack(name: str, **kwargs):
    """Return an :class:`Attack`, or ``None`` for ``'Benign'`` (no attack)."""
    cls = attack_class(name)
    if cls is None:
        return None
    _, mode = _resolve(name)
    if mode is not None:
        kwargs = {**kwargs, "mode": mode}
    return cls(**kwargs)
