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


def test_frame_sizes_are_multiples_of_8():
    for bad in (24, 60, 100):
        with pytest.raises(ValueError, match=f"got {bad}"):
            AutoencoderConfig(image_size=bad)
    assert AutoencoderConfig(image_size=128).latent_size == 16


def test_palette_output_is_exact_on_palette_colours():
    from trainer.stages.autoencoder import measure_palette

    torch.manual_seed(0)
    frames = torch.zeros(3, 64, 64, 3, dtype=torch.uint8)
    frames[:, :32] = torch.tensor([200, 30, 40], dtype=torch.uint8)
    frames[:, 40:, 10:20] = torch.tensor([1, 2, 250], dtype=torch.uint8)
    colors, covered = measure_palette(frames.numpy(), 4)
    assert covered == 1.0 and {tuple(c) for c in colors.tolist()} == {(0, 0, 0), (200, 30, 40), (1, 2, 250)}
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 8), dec_width=8, dec_fine=8,
                                       output="palette", palette_size=4))
    ae.set_palette(torch.from_numpy(colors))
    t = ae.palette_targets(frames)
    # targets index the exact colour; one-hot logits of the targets give the frames back bit-exactly
    logits = torch.nn.functional.one_hot(t, 4).movedim(-1, 1).float()
    assert torch.equal(to_uint8(ae.to_image(logits)), frames)
    # decoding always yields palette colours (crisp), whatever the latent
    img = to_uint8(ae.decode(torch.randn(2, 4, 8, 8)))
    cols = {tuple(c) for c in img.reshape(-1, 3).tolist()}
    assert cols <= {tuple(c) for c in colors.tolist()}
    with pytest.raises(ValueError, match="palette_size"):
        AutoencoderConfig(output="palette", palette_size=1)


def test_palette_fast_decode_equals_argmax_after_shuffle():
    torch.manual_seed(1)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 8), dec_width=8, dec_fine=8,
                                       output="palette", palette_size=6))
    ae.set_palette(torch.randint(0, 256, (6, 3), dtype=torch.uint8))
    ae.set_latent_stats(torch.randn(16, 4, 8, 8) * 2 + 1)
    z = torch.randn(3, 4, 8, 8)
    raw = z * ae.latent_std[:, None, None] + ae.latent_mean[:, None, None]
    assert torch.equal(ae.decode(z), ae.to_image(ae.decoder(raw)))
