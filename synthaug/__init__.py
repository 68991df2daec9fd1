"""synthaug: synthetic 3D MRI from a report- and class-conditioned latent diffusion model (CCELLA)
for classifier training. Later stages add the generator, cache and ``SyntheticMixDataset`` here."""

__version__ = "0.1.0.dev0"
