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
from edh.heads.reconstruction import ReconstructionHead, kl_divergence
from edh.core.features import FeatureSpec

IMAGES = FeatureSpec("pyramid", (1,), (1,))


def _objective(loss: str = "mse", kl_weight: float = 1.0, mean=(0.0,), std=(1.0,), image_size=16) -> ReconstructionHead:
    from edh.data.base import DataInfo

    head = ReconstructionHead(IMAGES, loss, kl_weight)
    head.bind_data(DataInfo(input_kind="image", in_channels=1, image_size=[image_size, image_size], mean=list(mean),
                            std=list(std)))
    return head

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
    assert set(model.tasks()) == {"decoder"} and not len(model.heads)  # the objective is no head of the model
    loss = model.tasks()["decoder"].loss([alone], x)  # the loss crops an overshoot too
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
    loss = _objective("l1")
    assert loss.loss([target + 0.25], target)["l1"].item() == pytest.approx(0.25)
    assert loss.select_targets({"image": target, "inputs": target * 0}, "decoder") is target  # a clean image wins
    zero = torch.zeros(4, 3)
    assert kl_divergence(zero, zero).item() == 0.0
    assert kl_divergence(torch.ones(4, 3), zero).item() == pytest.approx(1.5)
    vae_loss = _objective("mse", kl_weight=2.0)
    output = VariationalOutput(target, torch.ones(2, 3), torch.zeros(2, 3))
    assert vae_loss.loss(output, target)["kl"].item() == pytest.approx(2.0 * 1.5 / 256)
    # metrics in [0, 1] pixels: mean 0.5, std 0.25 normalisation; an error of 0.4 normalised = 0.1 in pixels
    head = _objective(mean=(0.5,), std=(0.25,))
    metric = head.make_metrics("test")
    clean = torch.full((2, 1, 16, 16), 0.0)
    head.update_metrics(metric, [clean + 0.4], clean)
    assert metric.compute()["psnr"].item() == pytest.approx(20.0, abs=1e-3)  # 10 log10(1 / 0.1^2)
    metric.reset()
    head.update_metrics(metric, [clean + 0.2], clean)
    assert metric.compute()["psnr"].item() == pytest.approx(26.0206, abs=1e-3)
    with pytest.raises(KeyError):
        loss.select_targets({"label": torch.zeros(2)}, "decoder")
    with pytest.raises(ValueError, match="out_channels: 3"):
        loss.loss([target], torch.rand(2, 3, 16, 16))


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
        edh.build(parse_run_spec(_spec(out_channels=3)).model).bind_data(info)
    with pytest.raises(SpecError, match="image_size: 8"):
        edh.build(parse_run_spec(_spec(latent_dim=4, image_size=16)).model).bind_data(info)


def test_tiny_vae_run_reconstructs_and_samples(tmp_path):
    from PIL import Image

    from edh.workflows.evaluate import evaluate_run
    from edh.workflows.predict import predict_inputs, sample_images
    from edh.train.runner import train_run

    run = train_run(parse_run_spec(_spec(latent_dim=8, image_size=8, variational=True, kl_weight=0.1)),
                    tmp_path / "run", limit_train_batches=8, limit_val_batches=2)
    evaluation = evaluate_run(run, "test", progress=False)
    metrics = evaluation.metrics["decoder"]
    assert set(metrics) == {"psnr", "ssim"} and metrics["psnr"] > 5 and -1 <= metrics["ssim"] <= 1
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy()).save(tmp_path / "digit.png")
    results, written = predict_inputs(run, [tmp_path / "digit.png"], tmp_path / "out")
    assert "psnr" in results[0].lines["decoder"] and written[0].name == "digit_reconstructions.png"
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
