"""drpo: Drifting Preference Optimization for one-step text-to-image generators."""

__version__ = "0.1.0"
