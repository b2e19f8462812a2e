"""Models without heads: the conv_transpose decoder, (variational) bottlenecks, the reconstruction
loss and metrics, and a tiny autoencoder run with pictures and samples."""

from __future__ import annotations

import math

import pytest
import torch

import edh
from edh.decoders.conv import VariationalOutput
from edh.core.spec import parse_run_spec
from edh.core.errors import SpecError
from edh.train.reconstruction import ReconstructionLoss, kl_divergence, make_reconstruction_loss

ENCODER = {"name": "conv", "in_channels": 1, "channels": [4, 8, 16]}


def _autoencoder(**decoder) -> edh.Model:
    return edh.build({"encoder": ENCODER, "decoder": {"name": "conv_transpose", **decoder}})


@pytest.mark.parametrize("size", [(16, 16), (13, 22)])
def test_fully_convolutional_any_size(size):
    model = _autoencoder(channels=[8, 4])
    x = torch.randn(2, 1, *size)
    alone = model.decoder(model.encoder(x))[0]  # without input_size: 4x the deepest map, which rounds up
    assert alone.shape[-2] == 4 * math.ceil(size[0] / 4) and alone.shape[-1] == 4 * math.ceil(size[1] / 4)
    output = model(x)["decoder"]  # the model passes input_size: cropped back
    assert isinstance(output, list) and output[0].shape == (2, 1, *size)
    torch.testing.assert_close(output[0], alone[..., :size[0], :size[1]])
    loss = ReconstructionLoss()([alone], {"inputs": x})  # the loss crops an overshoot too
    loss["mse"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bottleneck_and_variational_sampling():
    model = _autoencoder(latent_dim=6, image_size=16)
    assert model(torch.randn(2, 1, 16, 16))["decoder"][0].shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="sampling needs a variational decoder"):
        model.decoder.sample(2)
    vae = _autoencoder(latent_dim=6, image_size=16, variational=True)
    x = torch.randn(3, 1, 16, 16)
    output = vae(x)["decoder"]
    assert isinstance(output, VariationalOutput) and output.mean.shape == (3, 6) and output.images.shape == x.shape
    vae.train()
    assert not torch.equal(vae(x)["decoder"].images, vae(x)["decoder"].images), "training draws z"
    vae.eval()
    torch.testing.assert_close(vae(x)["decoder"].images, vae(x)["decoder"].images)
    samples = vae.decoder.sample(5, torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 16, 16) and torch.isfinite(samples).all()
    with pytest.raises(ValueError, match="set decoder.image_size to the data's image size \\(8 here\\)"):
        vae(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("options, message", [
    ({"variational": True}, "needs decoder.latent_dim"),
    ({"latent_dim": 4}, "needs decoder.image_size"),
    ({"channels": [4]}, "needs 2 widths"),
    ({"loss": "huber"}, "decoder.loss.*'mse' or 'l1'"),
])
def test_decoder_errors(options, message):
    with pytest.raises(ValueError, match=message):
        _autoencoder(**options)


def test_loss_terms_and_metrics():
    target = torch.rand(2, 1, 16, 16)
    loss = ReconstructionLoss("l1", mean=(0.0,), std=(1.0,))
    assert loss([target + 0.25], {"inputs": target})["l1"].item() == pytest.approx(0.25)
    assert loss.target_of({"image": target, "inputs": target * 0}) is target  # a given clean image wins
    zero = torch.zeros(4, 3)
    assert kl_divergence(zero, zero).item() == 0.0
    assert kl_divergence(torch.ones(4, 3), zero).item() == pytest.approx(1.5)
    vae_loss = ReconstructionLoss("mse", kl_weight=2.0)
    output = VariationalOutput(target, torch.ones(2, 3), torch.zeros(2, 3))
    assert vae_loss(output, {"inputs": target})["kl"].item() == pytest.approx(2.0 * 1.5 / 256)
    # metrics in [0, 1] pixels: mean 0.5, std 0.25 normalisation; an error of 0.4 normalised = 0.1 in pixels
    metric = ReconstructionLoss(mean=(0.5,), std=(0.25,))
    clean = torch.full((2, 1, 16, 16), 0.0)
    metric.update_metrics([clean + 0.4], {"inputs": clean})
    values = metric.compute_metrics()
    assert values["psnr"].item() == pytest.approx(20.0, abs=1e-3)  # 10 log10(1 / 0.1^2)
    metric.update_metrics([clean + 0.2], {"inputs": clean})  # compute_metrics reset the states
    assert metric.compute_metrics()["psnr"].item() == pytest.approx(26.0206, abs=1e-3)
    with pytest.raises(KeyError, match="targets\\['inputs'\\]"):
        loss([target], {"label": torch.zeros(2)})
    with pytest.raises(ValueError, match="out_channels: 3"):
        loss([target], {"inputs": torch.rand(2, 3, 16, 16)})


def _spec(**decoder) -> dict:
    return {
        "model": {"encoder": {"name": "conv", "channels": [8, 16]},
                  "decoder": {"name": "conv_transpose", "out_channels": 1, **decoder}, "heads": {}},
        "data": {"name": "digits", "image_size": 8, "batch_size": 64, "augment": "none"},
        "train": {"epochs": 2, "lr": 0.01},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }


def test_spec_mismatch_with_data_is_caught_before_training():
    from edh.data.base import build_data

    info = build_data("digits", {"image_size": 8}, 0).info
    with pytest.raises(SpecError, match="out_channels: 1"):
        make_reconstruction_loss(parse_run_spec(_spec(out_channels=3)), info)
    with pytest.raises(SpecError, match="image_size: 8"):
        make_reconstruction_loss(parse_run_spec(_spec(latent_dim=4, image_size=16)), info)


def test_tiny_vae_run_reconstructs_and_samples(tmp_path):
    from PIL import Image

    from edh.workflows.evaluate import evaluate_run
    from edh.workflows.predict import predict_images, sample_images
    from edh.train.runner import train_run

    run = train_run(parse_run_spec(_spec(latent_dim=8, image_size=8, variational=True, kl_weight=0.1)),
                    tmp_path / "run", limit_train_batches=8, limit_val_batches=2)
    evaluation = evaluate_run(run, "test", progress=False)
    metrics = evaluation.metrics["decoder"]
    assert set(metrics) == {"psnr", "ssim"} and metrics["psnr"] > 5 and -1 <= metrics["ssim"] <= 1
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy()).save(tmp_path / "digit.png")
    results, written = predict_images(run, [tmp_path / "digit.png"], tmp_path / "out")
    assert "psnr" in results[0].lines["decoder"] and written[0].name == "reconstructions.png"
    samples = sample_images(run, 6, tmp_path / "out", seed=0)
    assert samples.name == "samples.png" and samples.is_file()


def test_vae_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from edh.export.onnx import check_graph, export_graph

    model = _autoencoder(latent_dim=4, image_size=16, variational=True).eval()
    export_graph(model, (torch.randn(2, 1, 16, 16),), tmp_path / "vae.onnx", input_names=["images"],
                 probe=(torch.randn(3, 1, 16, 16),))
    checks = check_graph(tmp_path / "vae.onnx", model, (torch.randn(4, 1, 16, 16),))
    assert [c.name for c in checks] == ["decoder.images", "decoder.mean", "decoder.logvar"]
    assert all(c.max_abs_diff < 1e-4 for c in checks)
