"""purilib: backdoor attacks and purification defenses, reproducible from notebooks."""
__version__ = "0.1.0"
