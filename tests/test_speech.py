"""Speech: reading WAV files, transcript TSVs, the spoken-numbers synthesis (espeak-ng), the audio encoder's
features and padding, CTC decoding against brute force, and a tiny train -> eval -> predict through the CLI."""

from __future__ import annotations

import itertools
import math
import shutil
import struct
import wave
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edh.core.errors import DataError, SpecError
from edh.core.features import FeatureSpec, Sequence
from edh.data.base import DataFilesMissingError, DataInfo, build_data
from edh.data.speech import collate_speech
from edh.data.spoken_numbers import spoken_text
from edh.data.wav import AudioFormatError, read_wav, resample
from edh.encoders.audio import AudioEncoder, LogMel
from edh.heads.ctc import CTCHead, greedy_decode, prefix_beam_search

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
TINY_ENCODER = {"name": "audio", "n_mels": 16, "conv_channels": 4, "d_model": 16, "num_layers": 1, "num_heads": 2,
                "ffn_dim": 32}


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, width: int = 2) -> Path:
    """``samples`` ``(N,)`` or ``(N, channels)`` integers of ``width`` bytes as a PCM WAV file."""
    frames = samples[:, None] if samples.ndim == 1 else samples
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        if width == 3:
            data = frames.astype("<i4").reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
        else:
            data = frames.astype({1: np.uint8, 2: "<i2", 4: "<i4"}[width]).tobytes()
        out.writeframes(data)
    return path


def sine(rate: int, seconds: float = 0.5, hz: float = 440.0, scale: float = 16000) -> np.ndarray:
    return np.round(scale * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.int64)


# ---- WAV files ------------------------------------------------------------------------------------------
def test_wav_mono_stereo_widths_and_rates(tmp_path):
    tone = sine(16000)
    mono = read_wav(write_wav(tmp_path / "mono.wav", tone))
    assert mono.dtype == np.float32 and mono.shape == (8000,)
    np.testing.assert_allclose(mono, tone / 32768, atol=1e-6)
    stereo = read_wav(write_wav(tmp_path / "stereo.wav", np.stack([tone, np.zeros_like(tone)], 1)))
    np.testing.assert_allclose(stereo, tone / 65536, atol=1e-6)  # mixed down: the mean of the channels
    for width, scale in ((1, 100), (3, 2**22), (4, 2**30)):
        samples = sine(16000, scale=scale)
        read = read_wav(write_wav(tmp_path / f"w{width}.wav", samples + (128 if width == 1 else 0), width=width))
        np.testing.assert_allclose(read, samples / 2 ** (8 * width - 1), atol=1e-4)
    slow = read_wav(write_wav(tmp_path / "8k.wav", sine(8000), rate=8000))  # resampled to 16 kHz
    assert slow.shape == (8000,)
    np.testing.assert_allclose(slow[200:-200], (tone / 32768)[200:-200], atol=2e-3)


def test_resample_keeps_a_tone_and_the_length():
    rate = 22050
    tone = torch.sin(2 * math.pi * 300 * torch.arange(rate) / rate)
    out = resample(tone, rate, 16000)
    assert out.shape == (16000,)
    expected = torch.sin(2 * math.pi * 300 * torch.arange(16000) / 16000)
    assert (out[100:-100] - expected[100:-100]).abs().max() < 1e-3
    batch = resample(torch.stack([tone, tone]), rate, 16000)
    torch.testing.assert_close(batch[1], out)


def _float_wav() -> bytes:
    data = np.zeros(100, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " +
            struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


@pytest.mark.parametrize("content, message", [
    (b"ID3\x03\x00" + bytes(100), "an MP3 file, not a RIFF/WAVE file"),
    (b"hello, this is text" * 4, "not a RIFF/WAVE file"),
    (_float_wav(), "32-bit float samples"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", "truncated or damaged"),
])
def test_unreadable_audio_names_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(AudioFormatError, match=message) as error:
        read_wav(path)
    assert str(path) in str(error.value) and "ffmpeg -i" in str(error.value) and "-ar 16000" in str(error.value)


def test_empty_and_missing_wavs(tmp_path):
    with pytest.raises(AudioFormatError, match="holds no samples"):
        read_wav(write_wav(tmp_path / "empty.wav", np.zeros(0, np.int64)))
    with pytest.raises(DataFilesMissingError, match="does not exist"):
        read_wav(tmp_path / "nothing.wav")


# ---- audio-folder ----------------------------------------------------------------------------------------
def _folder(tmp_path: Path, lines: list[str], files: tuple[str, ...] = ("a.wav", "b.wav", "c.wav")) -> Path:
    for name in files:
        write_wav(tmp_path / name, sine(16000, 0.2))
    (tmp_path / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_audio_folder_builds_splits_alphabet_and_fingerprint(tmp_path):
    root = _folder(tmp_path, ["# file\ttranscript", "a.wav\thello  world", "b.wav\tbye\ttest", "c.wav\tok\tval"])
    bundle = build_data("audio-folder", {"path": str(root)})
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1, 1, 1)
    assert bundle.info.input_kind == "audio" and bundle.info.targets == {"text": "transcription"}
    alphabet = bundle.info.extra["alphabet"]
    assert alphabet == sorted(set("hello worldbyeok"))
    assert bundle.info.extra["head_defaults"]["text"]["vocab_size"] == len(alphabet) + 1
    assert bundle.train.sample_ids() == ["a.wav"] and "data_files.json" in bundle.files
    waves, targets = collate_speech([bundle.train[0], bundle.test[0]])
    assert waves.shape == (2, 3200) and targets["text"].shape == (2, len("hello world"))
    assert (targets["text"][1, 3:] == 0).all() and (targets["text"] != 0).sum() == len("hello world") + 3


@pytest.mark.parametrize("lines, message", [
    (["a.wav\thello", "missing.wav\tgone"], r"transcripts.tsv, line 2: missing.wav is not in .* \(missing file\)"),
    (["a.wav\t  "], r"line 1: the transcript of a.wav is empty"),
    (["a.wav hello"], r"line 1: no tab"),
    (["a.wav\thi\ttrain2"], r"third column must be train, val or test"),
])
def test_bad_transcript_lines_are_named(tmp_path, lines, message):
    root = _folder(tmp_path, lines)
    with pytest.raises(DataError, match=message):
        build_data("audio-folder", {"path": str(root)})


def test_a_listed_file_that_is_not_pcm_is_refused_when_the_data_is_built(tmp_path):
    root = _folder(tmp_path, ["a.wav\thi", "b.wav\tho"])
    (root / "b.wav").write_bytes(_float_wav())
    with pytest.raises(AudioFormatError, match=r"b\.wav: its samples are 32-bit float"):
        build_data("audio-folder", {"path": str(root)})


# ---- the audio encoder -----------------------------------------------------------------------------------
def test_stft_paths_agree_and_match_torch_stft():
    features = LogMel(16000, 400, 160, 80, 0.0, None)
    waves = 0.1 * torch.randn(2, 4000)
    fft, conv = features.power(waves, fft=True), features.power(waves, fft=False)
    assert fft.shape == (2, 201, 4000 // 160 + 1)
    assert (fft - conv).abs().max() < 1e-4 * fft.abs().max()


@pytest.mark.parametrize("stack", ["transformer", "lstm"])
def test_a_clip_gives_the_same_features_alone_and_padded_in_a_batch(stack):
    encoder = AudioEncoder(**{k: v for k, v in TINY_ENCODER.items() if k != "name"}, stack=stack).eval()
    clip = 0.1 * torch.randn(1, 3000)
    batch = torch.cat([torch.cat([clip, torch.zeros(1, 2000)], 1), 0.1 * torch.randn(1, 5000)])
    with torch.no_grad():
        alone, together = encoder(clip), encoder(batch)
    length = encoder.output_length(3000)
    assert alone.features.shape == (1, length, 16) and together.features.shape == (2, encoder.output_length(5000), 16)
    torch.testing.assert_close(together.features[0, :length], alone.features[0], atol=1e-5, rtol=1e-4)
    assert together.padding_mask[0].sum() == together.features.shape[1] - length
    assert not together.padding_mask[1].any()


def test_audio_encoder_refuses_wrong_inputs():
    encoder = AudioEncoder(**{k: v for k, v in TINY_ENCODER.items() if k != "name"})
    with pytest.raises(ValueError, match=r"mix stereo down to mono"):
        encoder.check_input(torch.zeros(2, 2, 1600))
    with pytest.raises(ValueError, match=r"samples / 32768"):
        encoder.check_input(torch.zeros(2, 1600, dtype=torch.int16))
    with pytest.raises(ValueError, match="stack must be one of"):
        AudioEncoder(stack="gru")
    assert encoder.example_input(batch_size=2).shape == (2, 16000)


@pytest.mark.parametrize("stack", ["transformer", "lstm"])
def test_the_encoder_exports_to_onnx_with_its_padding(tmp_path, stack):
    pytest.importorskip("onnxruntime")
    from edh.export.onnx import check_graph, export_graph

    encoder = AudioEncoder(**{k: v for k, v in TINY_ENCODER.items() if k != "name"}, stack=stack).eval()
    waves = 0.1 * torch.randn(2, 1600)
    waves[1, 1200:] = 0
    export_graph(encoder, (waves,), tmp_path / "audio.onnx", ["waves"], probe=(0.1 * torch.randn(3, 1600),))
    probe = 0.1 * torch.randn(3, 1600)
    probe[0, 800:] = 0  # other lengths than the traced batch's
    assert check_graph(tmp_path / "audio.onnx", encoder, (probe,))


# ---- CTC -------------------------------------------------------------------------------------------------
def brute_force(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """Probability of every labelling: the sum over every frame-by-frame path that collapses to it."""
    totals: dict[tuple[int, ...], float] = defaultdict(float)
    T, V = log_probs.shape
    for path in itertools.product(range(V), repeat=T):
        label = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1]))
        totals[label] += math.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
    return totals


@pytest.mark.parametrize("seed", range(4))
def test_prefix_beam_search_finds_the_most_probable_labelling(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = (2 * torch.randn(5, 3, generator=generator)).log_softmax(-1).double().numpy()
    totals = brute_force(log_probs)
    best = max(totals, key=totals.get)
    ids, score = prefix_beam_search(log_probs, beam_size=64, prune=None)
    assert tuple(ids) == best and score == pytest.approx(math.log(totals[best]), abs=1e-9)
    narrow, _ = prefix_beam_search(log_probs, beam_size=2)
    assert totals[tuple(narrow)] <= totals[best] + 1e-12


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    path = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0], [3, 0, 3, 3, 1, 1, 1, 1]])
    log_probs = torch.nn.functional.one_hot(path, 4).float().mul(10).log_softmax(-1)
    rows, scores = greedy_decode(log_probs, torch.tensor([8, 4]))
    assert rows == [[1, 1, 2], [3, 3]] and scores.shape == (2,)


def _head(alphabet: str = "ab", beam_size: int = 1) -> CTCHead:
    return CTCHead(FeatureSpec("sequence", (8,)), len(alphabet) + 1, list(alphabet), beam_size)


def test_ctc_loss_is_the_brute_force_probability_per_character():
    log_probs = torch.randn(1, 4, 3).log_softmax(-1)
    totals = brute_force(log_probs[0].double().numpy())
    head = _head()
    for target in ([1, 2], [1, 1], [2]):
        padded = torch.tensor([target + [0] * (3 - len(target))])
        loss = head.loss({"log_probs": log_probs, "lengths": torch.tensor([4])}, padded)["ctc"]
        assert loss.item() == pytest.approx(-math.log(totals[tuple(target)]) / len(target), rel=1e-4)


def test_ctc_head_predicts_texts_and_error_rates():
    head = _head(" ab", beam_size=3)
    features = Sequence(torch.randn(2, 6, 8), torch.tensor([[False] * 6, [False] * 4 + [True] * 2]))
    outputs = head(features)
    assert outputs["lengths"].tolist() == [6, 4]
    prediction = head.predict(outputs)
    assert len(prediction["texts"]) == 2 and set("".join(prediction["texts"])) <= set(" ab")
    assert head.format_prediction(prediction, 1) == prediction["texts"][1]
    metrics = head.make_metrics("test")
    head.update_metrics(metrics, outputs, torch.tensor([[2, 1, 3], [2, 0, 0]]))
    values = metrics.compute()
    assert set(values) == {"wer", "cer"} and all(v >= 0 for v in values.values())


def test_ctc_head_takes_and_checks_the_datas_alphabet():
    head = CTCHead(FeatureSpec("sequence", (8,)), 4)
    head.bind_data(DataInfo(extra={"alphabet": list("xyz")}))
    assert head.alphabet == list("xyz") and head.text([3, 1]) == "zx"
    with pytest.raises(SpecError, match="alphabet differs from the data's"):
        head.bind_data(DataInfo(extra={"alphabet": list("abc")}))
    with pytest.raises(SpecError, match="vocab_size is 4, but the data's alphabet has 2"):
        head.bind_data(DataInfo(extra={"alphabet": list("ab")}))
    with pytest.raises(ValueError, match="vocab_size - 1 = 3 single characters"):
        CTCHead(FeatureSpec("sequence", (8,)), 4, ["a", "b"])


# ---- spoken-numbers --------------------------------------------------------------------------------------
def test_number_words():
    assert spoken_text(402, "words") == "four hundred and two"
    assert spoken_text(1234, "words") == "one thousand two hundred and thirty four"
    assert spoken_text(402, "digits") == "four zero two"


@needs_espeak
def test_spoken_numbers_hold_out_voices_and_are_cached(tmp_path, monkeypatch):
    options = {"train_size": 4, "val_size": 1, "test_size": 3, "max_number": 50, "cache_dir": str(tmp_path),
               "voices": ["en-us", "en+m1"], "test_voices": ["en-gb-scotland+f3"], "workers": 2}
    bundle = build_data("spoken-numbers", options)
    assert not list(tmp_path.glob("*.npz"))  # the first clip read synthesises them all
    assert {r["voice"] for r in bundle.train.rows} <= {"en-us", "en+m1"}
    assert {r["voice"] for r in bundle.test.rows} == {"en-gb-scotland+f3"}
    wave_, target = bundle.test[0]
    assert wave_.dtype == torch.float32 and 0.2 * 16000 < len(wave_) < 5 * 16000 and wave_.abs().max() <= 1
    alphabet = bundle.info.extra["alphabet"]
    assert "".join(alphabet[i - 1] for i in target["text"].tolist()) == bundle.test.rows[0]["text"]
    assert len(list(tmp_path.glob("*.npz"))) == 1
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a cached build needs no espeak-ng
    again = build_data("spoken-numbers", options)
    assert again.info.fingerprint == bundle.info.fingerprint
    torch.testing.assert_close(again.test[0][0], wave_)
    with pytest.raises(DataFilesMissingError, match="apt-get install espeak-ng"):
        build_data("spoken-numbers", {**options, "train_size": 5})
    with pytest.raises(SpecError, match="share en-us"):
        build_data("spoken-numbers", {**options, "test_voices": ["en-us"]})


@needs_espeak
def test_an_unknown_voice_is_named(tmp_path):
    bundle = build_data("spoken-numbers", {"train_size": 1, "val_size": 0, "test_size": 0, "voices": ["xx-nowhere"],
                                           "cache_dir": str(tmp_path)})  # the plan only: synthesis is lazy
    with pytest.raises(DataError, match="voice 'xx-nowhere'.*espeak-ng --voices=en"):
        bundle.train[0]


# ---- the command line ------------------------------------------------------------------------------------
@needs_espeak
def test_train_eval_and_predict_a_clip_through_the_cli(tmp_path, cli, capsys):
    spec = {"model": {"encoder": dict(TINY_ENCODER), "heads": {"text": {"type": "ctc", "beam_size": 2}}},
            "data": {"name": "spoken-numbers", "train_size": 8, "val_size": 2, "test_size": 2, "max_number": 20,
                     "cache_dir": str(tmp_path / "cache"), "batch_size": 4},
            "train": {"epochs": 1, "lr": 0.01, "seed": 0},
            "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}}
    (tmp_path / "speech.yaml").write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    assert cli(["train", str(tmp_path / "speech.yaml"), "--out", str(run), "--max-steps", "2"]) == 0
    saved = yaml.safe_load((run / "spec.yaml").read_text())["model"]["heads"]["text"]
    assert saved["vocab_size"] == 28 and "".join(saved["alphabet"]) == " abcdefghijklmnopqrstuvwxyz"
    capsys.readouterr()
    assert cli(["eval", str(run)]) == 0
    assert "wer=" in capsys.readouterr().out
    clip = write_wav(tmp_path / "clip.wav", np.round(sine(22050, 0.6, 200) * 0.5).astype(np.int64), rate=22050)
    assert cli(["predict", str(run), str(clip)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{clip}\ttext: ")


def test_speech_trains_with_a_step_decoder_and_generates_transcripts(tmp_path):
    """``targets: tokens``: an audio encoder + an LSTM decoder + an lm head, trained, evaluated (CER,
    exact match from generated text) and predicting a transcript for a wav file."""
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run
    from edh.workflows.evaluate import evaluate_run
    from edh.workflows.translate import Translator

    root = _folder(tmp_path, ["a.wav\thello\ttrain", "b.wav\tbye\ttest", "c.wav\tok\tval"])
    bundle = build_data("audio-folder", {"path": str(root), "targets": "tokens"})
    assert bundle.info.targets == {"tokens": "generation"} and "tokenizer.json" in bundle.files
    waves, targets, context = bundle.collate_fn([bundle.train[0], bundle.test[0]])
    assert waves.shape == (2, 3200) and torch.equal(targets["tokens"][:, :-1], context["decoder_input"][:, 1:])
    assert bundle.test.references == ["bye"] and bundle.train.sample_ids() == ["a.wav"]
    spec = parse_run_spec({
        "model": {"encoder": {"name": "audio", "n_mels": 16, "conv_channels": 4, "d_model": 16, "num_layers": 1,
                              "num_heads": 2, "ffn_dim": 32},
                  "decoder": {"name": "lstm", "hidden_size": 16},
                  "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
        "data": {"name": "audio-folder", "path": str(root), "targets": "tokens", "batch_size": 2},
        "train": {"epochs": 1, "seed": 0}, "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}})
    run = train_run(spec, tmp_path / "run", max_steps=2)
    metrics = evaluate_run(run, "test", None, progress=False).metrics["tokens"]
    assert {"cer", "exact_match", "bleu"} <= set(metrics)
    assert isinstance(Translator(run).describe_files([str(root / "b.wav")])[0], str)
    with pytest.raises(ValueError, match="data.targets must be"):
        build_data("audio-folder", {"path": str(root), "targets": "words"})
