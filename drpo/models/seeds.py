"""The one seed formula: the noise of (sampling seed, prompt) is `seed * 10**6 + prompt_id`, so a
prompt keeps its noise whichever batch, shard or process draws it (sampling, training grids, the
world base's sample grid)."""

LATENT_SEED_STRIDE = 1_000_000


def latent_seed(seed: int, prompt_id: int) -> int:
    return int(seed) * LATENT_SEED_STRIDE + int(prompt_id)
