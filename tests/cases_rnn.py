"""Role-tester cases (`tests/roles.py` TINY) of the rnn components; merged into TINY by roles.py."""

from __future__ import annotations

from roles import VOCAB, Case, decoder_input  # noqa: F401  (roles.py imports this module at its end, once Case exists)

# bidirectional, two layers: both directions, the layer stacking and the packed / traced paths are checked
RNN_ENCODER = {"vocab_size": VOCAB, "embedding_dim": 16, "hidden_size": 12, "num_layers": 2, "bidirectional": True}
# two layers, embedding_dim != hidden_size: the untied case (tying needs them equal; tests/test_rnn.py ties)
RNN_DECODER = {"vocab_size": VOCAB, "embedding_dim": 16, "hidden_size": 20, "num_layers": 2}

CASES: dict = {}
for _cell in ("lstm", "gru"):
    CASES[("encoder", _cell)] = Case(dict(RNN_ENCODER), size=(7,))
    CASES[("decoder", _cell)] = Case(dict(RNN_DECODER), size=(7,), encoder=(_cell, dict(RNN_ENCODER)),
                                     context=decoder_input)
