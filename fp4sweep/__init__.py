"""fp4sweep: which combination of FP4 training techniques works, and what each costs."""

__version__ = "0.1.0"
