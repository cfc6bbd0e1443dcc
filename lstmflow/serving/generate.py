"""Sampling text from a trained language model: read the prompt, then draw one token at a time.

Every lstm carries its (h, c) from token to token, so each new token costs one step of the network, not a pass
over everything generated so far. Padding and the unknown token are never drawn.
"""

from __future__ import annotations

import torch

from lstmflow.data.text import PAD_ID, UNK_ID, Tokenizer
from lstmflow.errors import DataError
from lstmflow.models.lstm import LSTMNet


@torch.no_grad()
def generate(
    model: LSTMNet, tokenizer: Tokenizer, prompt: str, tokens: int, temperature: float = 1.0, seed: int = 0
) -> str:
    """The text that follows ``prompt``: ``tokens`` tokens drawn from the model's next-token distribution.

    ``temperature`` divides the scores before the softmax: below 1 the text is safer and more repetitive, above 1
    more varied; 0 always takes the likeliest token. The same seed gives the same text.
    """
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise DataError(f"the prompt {prompt!r} holds no token for this {tokenizer.kind} tokenizer; give some text")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.tensor(ids, dtype=torch.float32).view(1, -1, 1)  # (T,) → (1, T, 1)
    state = None
    drawn: list[int] = []
    for _ in range(tokens):
        logits, state = model.logits_carrying(x, state)  # (1, T, V)
        scores = logits[0, -1].double()  # (V,)
        scores[[PAD_ID, UNK_ID]] = -torch.inf
        if temperature == 0:
            token = int(scores.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(scores / temperature, dim=-1), 1, generator=generator))
        drawn.append(token)
        x = torch.tensor([[[float(token)]]])  # (1, 1, 1): the next step reads only the new token
    return decode(tokenizer, drawn, after=prompt)


def decode(tokenizer: Tokenizer, ids: list[int], after: str = "") -> str:
    """Token ids back to text. Characters join as they are; words and subwords are joined by spaces, except
    before punctuation, and a space separates them from ``after`` (the text they continue) when it needs one."""
    if tokenizer.bpe is not None:
        pieces = [tokenizer.bpe.id_to_token(i) for i in ids]
    else:
        assert tokenizer.tokens is not None, "a word or char tokenizer keeps its vocabulary"
        pieces = [tokenizer.tokens[i] for i in ids]
    if tokenizer.kind == "char":
        return "".join(pieces)
    # A word (or subword) is spaced from what precedes it; punctuation sticks to the word before.
    text = "".join(" " + piece if piece[:1].isalnum() or piece[:1] == "_" else piece for piece in pieces)
    return text.lstrip() if not after or after[-1].isspace() else text
