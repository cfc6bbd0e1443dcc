"""The encoder–decoder learns to reverse short strings; beam search never scores below greedy decoding; a spec
that cannot make a translator is refused by YAML path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lstmflow.config import ModelSpec
from lstmflow.errors import ConfigError
from lstmflow.models.seq2seq import LENGTH_ALPHA, Seq2Seq

SYMBOLS = 8  # ids 2..9 (0 padding, 1 unknown); the target adds BOS 10 and EOS 11
BOS, EOS = SYMBOLS + 2, SYMBOLS + 3


def translator(score: str | None = "luong", units: int = 64) -> Seq2Seq:
    decoder = [{"embedding": {"dim": 16}}, {"lstm": {"units": units, "return_sequences": True}}]
    decoder += [{"attention": {"score": score}}] if score else []
    spec = ModelSpec.model_validate(
        {
            "layers": [{"embedding": {"dim": 16}}, {"lstm": {"units": units, "return_sequences": True}}],
            "decoder": [*decoder, {"dense": {"activation": "softmax"}}],
        }
    )
    return Seq2Seq(spec, SYMBOLS + 2, SYMBOLS + 4)


def reversal_batch(generator: torch.Generator, batch: int = 64) -> tuple[torch.Tensor, ...]:
    """Sources of 2-6 symbols, padded; targets their reversal with BOS in front (input) or EOS after (target)."""
    lengths = torch.randint(2, 7, (batch,), generator=generator)
    source = torch.zeros(batch, 6, dtype=torch.long)
    decoder_input = torch.zeros(batch, 7, dtype=torch.long)
    target = torch.zeros(batch, 7, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        ids = torch.randint(2, SYMBOLS + 2, (length,), generator=generator)
        source[row, :length] = ids
        decoder_input[row, : length + 1] = torch.cat([torch.tensor([BOS]), ids.flip(0)])
        target[row, : length + 1] = torch.cat([ids.flip(0), torch.tensor([EOS])])
    return source, lengths, decoder_input, target


def trained_reverser(score: str | None, steps: int = 300) -> Seq2Seq:
    torch.manual_seed(0)
    model = translator(score)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        source, lengths, decoder_input, target = reversal_batch(generator)
        logits = model(source, lengths, decoder_input)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("score", ["luong", "bahdanau", None])
def test_learns_to_reverse_short_strings(score: str | None) -> None:
    model = trained_reverser(score)
    source, lengths, _, _ = reversal_batch(torch.Generator().manual_seed(99), batch=200)
    outputs, _, maps = model.greedy(source, lengths, BOS, EOS, max_steps=10)
    truth = [source[row, :length].flip(0).tolist() for row, length in enumerate(lengths.tolist())]
    exact = sum(out == want for out, want in zip(outputs, truth)) / len(truth)
    assert exact > 0.9
    if score:  # one attention row per written token and its end, over the source's own steps
        assert maps[0].shape == (len(outputs[0]) + 1, int(lengths[0]))
        assert torch.allclose(maps[0].sum(dim=1), torch.ones(len(outputs[0]) + 1))


def test_beam_search_never_scores_below_greedy() -> None:
    model = trained_reverser("luong", steps=25)  # half-trained: greedy's choices are often not the best sequence
    source, lengths, _, _ = reversal_batch(torch.Generator().manual_seed(5), batch=32)
    greedy_ids, greedy_scores, _ = model.greedy(source, lengths, BOS, EOS, max_steps=8)
    outputs, beam_scores = model.beam_search(source, lengths, BOS, EOS, max_steps=8, width=4)
    assert len(outputs) == 32

    def normalised(scores: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:  # the score beam search ranks by
        return scores / torch.tensor([len(one) + 1.0 for one in ids]) ** LENGTH_ALPHA

    beam, greedy = normalised(beam_scores, outputs), normalised(greedy_scores, greedy_ids)
    assert torch.all(beam >= greedy - 1e-5)
    assert torch.any(beam > greedy + 1e-3)  # and it does find better ones


def test_beam_scores_are_the_log_probabilities_of_what_it_returns() -> None:
    model = trained_reverser("luong")
    source, lengths, _, _ = reversal_batch(torch.Generator().manual_seed(7), batch=8)
    outputs, scores = model.beam_search(source, lengths, BOS, EOS, max_steps=10, width=3)
    for row, ids in enumerate(outputs):
        decoder_input = torch.tensor([[BOS, *ids]])
        with torch.no_grad():
            logits = model(source[row : row + 1, : int(lengths[row])], lengths[row : row + 1], decoder_input)
        log_probs = F.log_softmax(logits[0], dim=-1)
        expected = log_probs[torch.arange(len(ids) + 1), torch.tensor([*ids, EOS])].sum()
        assert float(scores[row]) == pytest.approx(float(expected), abs=1e-4)


def test_a_spec_that_cannot_translate_is_refused_by_path() -> None:
    spec = ModelSpec.model_validate(
        {
            "layers": [{"embedding": {"dim": 8}}, {"lstm": {"units": 8}}, {"batchnorm": {}}],
            "decoder": [{"embedding": {"dim": 8}}, {"lstm": {"units": 16, "return_sequences": True}},
                        {"dense": {"units": 5}}],
        }
    )  # fmt: skip
    with pytest.raises(ConfigError) as error:
        Seq2Seq(spec, 10, 12, where="pipelines.fr.model")
    text = str(error.value)
    assert "pipelines.fr.model.layers[2]: a translator's layers takes embedding, lstm, dropout layers, got " in text
    assert "pipelines.fr.model.decoder[1].lstm.units: starts from the state of pipelines.fr.model.layers[1]" in text
    assert "pipelines.fr.model.layers[1].lstm.return_sequences" in text
    assert "pipelines.fr.model.decoder[2].dense.units: scores the 12 target tokens" in text
