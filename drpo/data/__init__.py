"""Prompt sets and preference datasets."""
