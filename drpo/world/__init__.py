"""The shapes world: a small synthetic GenEval-like world in which the whole pipeline runs on CPU."""
