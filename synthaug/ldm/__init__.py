"""The latent diffusion model: autoencoder, CCELLA adapter, conditioned U-Net, training and sampling."""
