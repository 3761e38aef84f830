"""Training methods, one module each, on the interface in engine/methods/base.py."""
from engine.methods.bldr import BLDR
from engine.methods.ce import CE
from engine.methods.jnpl import JNPL
from engine.methods.l2b import L2B
from engine.methods.nlnl import NLNL
from engine.methods.pmnar import PMNAR
from engine.methods.pudistill import PUDistill

METHODS = {method.name: method for method in (CE, NLNL, JNPL, PMNAR, BLDR, L2B, PUDistill)}
