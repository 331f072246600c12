"""Autoencoder shapes, latent normalisation and pixel conversions."""

from __future__ import annotations

import pytest
import torch

from model.autoencoder import Autoencoder, AutoencoderConfig, from_uint8, to_uint8


def test_shapes_and_normalisation_roundtrip():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=8, enc_channels=(16, 16, 16), dec_width=16,
                                       dec_fine=8))
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    z_raw = ae.encode_raw(x)
    assert z_raw.shape == (4, 8, 8, 8)
    ae.set_latent_stats(z_raw)
    z = ae.encode(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(8), atol=1e-4)
    # decode undoes the normalisation: same as decoding the raw latents
    assert torch.allclose(ae.decode(z), ae.decoder(z_raw), atol=1e-5)
    assert ae.decode(z).shape == (4, 3, 64, 64)


def test_uint8_conversion_is_exact():
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(frames)), frames)


def test_only_64px_frames():
    with pytest.raises(ValueError, match="image_size=32"):
        AutoencoderConfig(image_size=32)
