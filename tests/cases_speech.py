"""Role-tester cases (`tests/roles.py` TINY) of the speech components; merged into TINY by roles.py."""

from __future__ import annotations

import torch

from roles import Case  # noqa: F401  (roles.py imports this module at its end, once Case exists)

# a text encoder gives the head a `Sequence` with padding (the second row: 5 of 7 positions), which is all a
# CTC head reads; the audio encoder's own case checks the waveform side
TEXT = ("transformer", {"vocab_size": 50, "preset": "tiny"})
ALPHABET = list(" abcd")


def characters(inputs: torch.Tensor, context: dict) -> dict[str, torch.Tensor]:
    """Transcripts of 3 and 2 characters (ids 1..5, 0-padded); the second repeats one (CTC needs a blank)."""
    return {"text": torch.tensor([[2, 3, 1], [4, 4, 0]])[:inputs.shape[0]]}


CASES: dict = {
    # 0.1 s of 16 kHz audio: 11 frames -> 3 after the /4 subsampling; 16 mels, one small layer
    ("encoder", "audio"): Case({"n_mels": 16, "conv_channels": 4, "d_model": 16, "num_layers": 1, "num_heads": 2,
                                "ffn_dim": 32, "freq_width": 2, "time_width": 2}, size=(1600,)),
    ("head", "ctc"): Case({"vocab_size": len(ALPHABET) + 1, "alphabet": ALPHABET, "beam_size": 2}, size=(7,),
                          encoder=TEXT, targets=characters, target="text"),
}
