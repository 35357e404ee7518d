"""Trainers: online DrPO, the offline variant and the baselines."""
