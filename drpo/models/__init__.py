"""Models drpo talks to: one-step generators, frozen feature maps (rewards live in drpo.rewards)."""
