"""Sampling text from a trained language model: read the prompt, then draw one token at a time.

Every lstm carries its (h, c) from token to token, so each new token costs one step of the network, not a pass
over everything generated so far. Padding and the unknown token are never drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lstmflow.data.text import PAD_ID, UNK_ID, Tokenizer
from lstmflow.errors import DataError
from lstmflow.models.lstm import LSTMNet

if TYPE_CHECKING:
    from lstmflow.models.ngram import NgramPartner


@torch.no_grad()
def generate(
    model: LSTMNet,
    tokenizer: Tokenizer,
    prompt: str,
    tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    ngram: NgramPartner | None = None,
) -> str:
    """The text that follows ``prompt``: ``tokens`` tokens drawn from the model's next-token distribution (mixed
    with the n-gram's after the same tokens when the model is served interpolated with one).

    ``temperature`` divides the log-probabilities before they are normalised again: below 1 the text is safer and
    more repetitive, above 1 more varied; 0 always takes the likeliest token. The same seed gives the same text.
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
        scores = torch.log_softmax(logits[0, -1].double(), dim=-1)  # (V,)
        if ngram is not None:
            scores = torch.from_numpy(ngram.next_probabilities(scores.exp().numpy(), [*ids, *drawn])).log()
        scores[[PAD_ID, UNK_ID]] = -torch.inf
        if temperature == 0:
            token = int(scores.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(scores / temperature, dim=-1), 1, generator=generator))
        drawn.append(token)
        x = torch.tensor([[[float(token)]]])  # (1, 1, 1): the next step reads only the new token
    return decode(tokenizer, drawn, after=prompt)


def decode(tokenizer: Tokenizer, ids: list[int], after: str = "") -> str:
    """Token ids back to text (:meth:`Tokenizer.decode`), with a space between it and ``after`` (the text it
    continues) when a word follows a word."""
    text = tokenizer.decode(ids)
    starts_a_word = text[:1].isalnum() or text[:1] == "_"
    joined = tokenizer.kind != "char" and starts_a_word and after and not after[-1].isspace()
    return " " + text if joined else text
