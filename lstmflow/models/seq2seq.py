"""The translator: an LSTM encoder–decoder (Sutskever et al. 2014), optionally with attention (Luong et al. 2015).

``model.layers`` is the encoder and ``model.decoder`` the decoder, in the Keras vocabulary of the guide's
translation example: the encoder reads the source tokens and its lstm layers' final (h, c) start the decoder's
(``return_state``), the k-th from the k-th; the decoder reads the target so far (the true one in training: teacher
forcing) and its last dense layer scores the next token. With an ``attention`` layer every decoder output also
reads a weighted mean of the encoder's outputs at every source step (padding weighted 0).

Decoding (:meth:`Seq2Seq.greedy`, :meth:`Seq2Seq.beam_search`) starts from the target's begin-of-sequence id and
stops at its end-of-sequence id or after ``max_steps``. Both are written here: they step this module's own layers
and caches, which no installed library's generic search knows how to drive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmflow.config import LayerSpec, ModelSpec
from lstmflow.config.translator import translator_problems
from lstmflow.errors import ConfigError
from lstmflow.models.layers import Dense, TokenEmbedding
from lstmflow.models.lstm_block import LSTMBlock
from lstmflow.models.network import weight_penalty

#: Beam search's length normalisation (Wu et al. 2016): a summed log-probability always favours short outputs;
#: dividing by (length + 1) ** 0.6 gained chrF and BLEU on both Django message sets of the quality suite and changed
#: nothing on the number sets (benchmarks/RESULTS.md, "translation").
LENGTH_ALPHA = 0.6
#: Each lstm layer's (h, c), each (1, B, H), as nn.LSTM takes and returns them.
States = list[tuple[Tensor, Tensor]]


class Attention(nn.Module):
    """Luong's global attention: a score per (decoder step, source step), the scores' softmax over the source's
    valid steps weighs the encoder outputs, and ``tanh(W [context; output])`` is the attentional output."""

    def __init__(self, score: str, units: int) -> None:
        super().__init__()
        self.score = score
        self.key = nn.Linear(units, units, bias=score == "bahdanau")  # luong: the bilinear kernel W_a
        self.query = nn.Linear(units, units, bias=False) if score == "bahdanau" else None
        self.energy = nn.Linear(units, 1, bias=False) if score == "bahdanau" else None
        self.mix = nn.Linear(2 * units, units)
        self.out_features = units

    def forward(self, queries: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """(attentional outputs (B, T, H), weights (B, T, S)) for decoder outputs ``queries`` (B, T, H)."""
        if self.query is None:
            scores = queries @ memory.keys.transpose(1, 2)  # (B, T, H) @ (B, H, S) → (B, T, S)
        else:
            assert self.energy is not None
            joint = self.query(queries)[:, :, None] + memory.keys[:, None]  # (B, T, 1, H) + (B, 1, S, H)
            scores = self.energy(torch.tanh(joint)).squeeze(-1)  # (B, T, S, 1) → (B, T, S)
        scores = scores.masked_fill(~memory.mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        context = weights @ memory.outputs  # (B, T, S) @ (B, S, H) → (B, T, H)
        return torch.tanh(self.mix(torch.cat([context, queries], dim=-1))), weights


@dataclass
class Memory:
    """What the decoder reads from the encoded source: the last encoder lstm's outputs (B, S, H), the attention's
    projection of them (``keys``, computed once per source), and which steps are real (B, S)."""

    outputs: Tensor
    keys: Tensor
    mask: Tensor

    def repeat(self, times: int) -> Memory:
        """Each source ``times`` times in a row (one copy per beam)."""
        return Memory(*(t.repeat_interleave(times, dim=0) for t in (self.outputs, self.keys, self.mask)))


class Seq2Seq(nn.Module):
    """An encoder–decoder compiled from ``spec``: ``forward(source, lengths, decoder_input)`` gives the logits of
    every next target token (B, T, target_vocab) under teacher forcing."""

    def __init__(self, spec: ModelSpec, source_vocab: int, target_vocab: int, where: str = "model") -> None:
        super().__init__()
        problems = translator_problems(spec, where)
        head = (spec.decoder or [])[-1].dense if spec.decoder else None
        if head is not None and head.units not in (None, target_vocab):
            problems.append(
                f"{where}.decoder[{len(spec.decoder or []) - 1}].dense.units: scores the {target_vocab} target tokens "
                f"(begin and end marks included), got {head.units}; leave it out to infer it"
            )
        if problems:
            raise ConfigError(problems)
        assert spec.decoder is not None  # translator_problems needs one
        self.spec = spec
        self.encoder = nn.ModuleList(_modules(spec.layers, source_vocab, target_vocab))
        self.decoder = nn.ModuleList(_modules(spec.decoder, target_vocab, target_vocab))
        self.source_vocab, self.target_vocab = source_vocab, target_vocab
        attention = [layer for layer in self.decoder if isinstance(layer, Attention)]
        self.attention = attention[0] if attention else None

    def forward(self, source: Tensor, lengths: Tensor, decoder_input: Tensor) -> Tensor:
        memory, states = self.encode(source, lengths)
        logits, _, _ = self.decode(decoder_input, states, memory)
        return logits

    def encode(self, source: Tensor, lengths: Tensor) -> tuple[Memory, States]:
        """The source (B, S) token ids with ``lengths`` (B,) read by the encoder: its memory and the final (h, c)
        of every lstm, each after the source's own last token."""
        x, states = source.unsqueeze(-1), []  # (B, S) → (B, S, 1), the embedding's input
        for layer in self.encoder:
            if isinstance(layer, LSTMBlock):
                packed = pack_padded_sequence(
                    layer.input_dropout(x), lengths.cpu(), batch_first=True, enforce_sorted=False
                )
                outputs, state = layer.lstm(packed)  # h, c (1, B, H) each, in the batch's order
                x, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.shape[1])  # (B, S, H)
                states.append(state)
            else:
                x = layer(x)
        mask = source != 0  # (B, S): padding is id 0
        keys = x if self.attention is None else self.attention.key(x)
        return Memory(x, keys, mask), states

    def decode(self, tokens: Tensor, states: States, memory: Memory) -> tuple[Tensor, States, Tensor | None]:
        """(logits (B, T, V), the lstm layers' final states, the attention weights (B, T, S) or None) for target
        tokens (B, T) read from ``states``."""
        x, final, weights = tokens.unsqueeze(-1), [], None  # (B, T) → (B, T, 1)
        lstm_index = 0
        for index, layer in enumerate(self.decoder):
            if isinstance(layer, LSTMBlock):
                x, state = layer.carrying(x, states[lstm_index])  # (B, T, H)
                final.append(state)
                lstm_index += 1
            elif isinstance(layer, Attention):
                x, weights = layer(x, memory)
            elif isinstance(layer, Dense) and index == len(self.decoder) - 1:
                x = layer.linear(x)  # (B, T, V) logits: the softmax is folded into the loss
            else:
                x = layer(x)
        return x, final, weights

    @torch.no_grad()
    def greedy(
        self, source: Tensor, lengths: Tensor, bos: int, eos: int, max_steps: int
    ) -> tuple[list[list[int]], Tensor, list[Tensor]]:
        """The most likely next token at every step: (token ids per sample without BOS/EOS, summed log-probability
        per sample (B,), attention weights per sample (T_i, S_i), empty tensors without attention)."""
        memory, states = self.encode(source, lengths)
        batch = source.shape[0]
        tokens = torch.full((batch, 1), bos, dtype=torch.long, device=source.device)
        done = torch.zeros(batch, dtype=torch.bool, device=source.device)
        scores = torch.zeros(batch, device=source.device)
        steps: list[Tensor] = []
        weights: list[Tensor] = []
        for _ in range(max_steps):
            logits, states, attention = self.decode(tokens, states, memory)
            log_probs = F.log_softmax(logits[:, -1], dim=-1)  # (B, V)
            best, tokens = log_probs.max(dim=-1, keepdim=True)  # (B, 1)
            scores += torch.where(done, 0.0, best.squeeze(1))
            steps.append(torch.where(done[:, None], eos, tokens))
            if attention is not None:
                weights.append(attention[:, -1])  # (B, S)
            done |= tokens.squeeze(1) == eos
            if done.all():
                break
        ids = torch.cat(steps, dim=1).tolist()  # (B, T)
        outputs = [_until_eos(row, eos) for row in ids]
        maps = [
            torch.stack([w[i] for w in weights])[: len(out) + 1, : int(lengths[i])] if weights else torch.empty(0)
            for i, out in enumerate(outputs)
        ]
        return outputs, scores, maps

    @torch.no_grad()
    def beam_search(
        self, source: Tensor, lengths: Tensor, bos: int, eos: int, max_steps: int, width: int
    ) -> tuple[list[list[int]], Tensor]:
        """The ``width`` best partial translations kept at every step (by summed log-probability), the finished one
        chosen by its log-probability over ``(tokens + 1) ** LENGTH_ALPHA``: (token ids per sample, the chosen one's
        log-probability (B,)). The greedy translation joins the final candidates, so the choice never ranks below
        greedy decoding's by that score."""
        greedy_ids, greedy_scores, _ = self.greedy(source, lengths, bos, eos, max_steps)
        memory, states = self.encode(source, lengths)
        batch, device = source.shape[0], source.device
        memory = memory.repeat(width)
        states = [(h.repeat_interleave(width, dim=1), c.repeat_interleave(width, dim=1)) for h, c in states]
        scores = torch.full((batch, width), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live beam per source at first: the others are copies
        tokens = torch.full((batch * width, 1), bos, dtype=torch.long, device=device)
        history = torch.empty((batch, width, 0), dtype=torch.long, device=device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
        for _ in range(max_steps):
            logits, states, _ = self.decode(tokens, states, memory)
            vocab = logits.shape[-1]
            candidates = scores[:, :, None] + F.log_softmax(logits[:, -1], dim=-1).view(batch, width, vocab)
            top, flat = candidates.view(batch, -1).topk(width, dim=1)  # (B, W)
            origin, token = flat // vocab, flat % vocab  # which beam each came from, the token it adds
            history = torch.cat([history.gather(1, origin[:, :, None].expand(-1, -1, history.shape[2])),
                                 token[:, :, None]], dim=2)  # fmt: skip
            ended = token == eos
            for b, k in ended.nonzero().tolist():
                if top[b, k] > float("-inf"):
                    finished[b].append((float(top[b, k]), history[b, k, :-1].tolist()))
            scores = top.masked_fill(ended, float("-inf"))
            rows = (origin + torch.arange(batch, device=device)[:, None] * width).flatten()  # into B·W
            states = [(h[:, rows], c[:, rows]) for h, c in states]
            tokens = token.flatten()[:, None]
            if all(len(done) >= width for done in finished) or bool(torch.isinf(scores).all()):
                break
        else:  # out of steps: the live candidates compete too, unfinished as greedy's may be
            for b, k in (scores > float("-inf")).nonzero().tolist():
                finished[b].append((float(scores[b, k]), history[b, k].tolist()))
        chosen = []
        for b in range(batch):
            candidates_b = [*finished[b], (float(greedy_scores[b]), greedy_ids[b])]
            chosen.append(max(candidates_b, key=lambda pair: pair[0] / (len(pair[1]) + 1) ** LENGTH_ALPHA))
        return [ids for _, ids in chosen], torch.tensor([score for score, _ in chosen])

    def regularization_penalty(self) -> Tensor:
        """``l1·Σ|w| + l2·Σw²`` over both sides' weight matrices, embeddings left out (as in LSTMNet)."""
        return weight_penalty(self.spec, [*self.encoder, *self.decoder])

    def lstm_kernels_trained(self) -> list[str]:
        return ["torch"]  # packed encoder and stepped decoder: nn.LSTM throughout


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def _modules(layers: list[LayerSpec], vocab: int, target_vocab: int) -> list[nn.Module]:
    """One module per layer of a side (checked by :func:`translator_problems`); the last dense gives the scores of
    the ``target_vocab`` tokens when its units are omitted."""
    modules: list[nn.Module] = []
    width = 0
    for index, layer in enumerate(layers):
        module: nn.Module
        if layer.embedding is not None:
            args = layer.embedding
            module = TokenEmbedding(vocab, args.dim, args.frozen, args.dropout)
        elif layer.lstm is not None:
            module = LSTMBlock(width, layer.lstm.units, True, False, layer.lstm.dropout, kernel="torch")
        elif layer.attention is not None:
            module = Attention(layer.attention.score, width)
        elif layer.dense is not None:
            units = layer.dense.units or (target_vocab if index == len(layers) - 1 else width)
            module = Dense(width, units, layer.dense.activation)
        else:
            assert layer.dropout is not None  # the kinds translator_problems lets through
            module = nn.Dropout(layer.dropout.rate)
        width = getattr(module, "out_features", width)
        modules.append(module)
    return modules
