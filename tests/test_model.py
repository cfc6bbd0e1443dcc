"""The layer-spec compiler: shapes, every accepted argument, the shape-rule errors, the penalty and the summary."""

from __future__ import annotations

import typing
from typing import Any

import pytest
import torch
from torch import nn

from lstmflow.config import Activation, ModelSpec
from lstmflow.errors import ConfigError
from lstmflow.models.lstm import LSTMNet, build_model, summary

torch.set_num_threads(1)

WHERE = "pipelines.sunspots.model"
NEEDS = "horizon 12 × 1 target"


def spec(*layers: dict[str, Any], **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate({"layers": list(layers), **extra})


def batch(b: int = 4, t: int = 7, f: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, f, generator=torch.Generator().manual_seed(seed))  # (B, T, F)


def build_error(model_spec: ModelSpec, n_outputs: int | None = 12) -> str:
    with pytest.raises(ConfigError) as caught:
        build_model(model_spec, n_features=1, n_outputs=n_outputs, where=WHERE, needs=NEEDS)
    return str(caught.value)


# ------------------------------------------------------------------------------------------- the guide's model

GUIDE = spec({"lstm": {"units": 128, "return_sequences": False}}, {"dense": {"units": 10, "activation": "softmax"}})


def test_guide_example_shapes_and_softmax_rows() -> None:
    torch.manual_seed(0)
    model = build_model(GUIDE, n_features=1, n_outputs=10)
    out = model(batch(b=5, t=30, f=1))
    assert out.shape == (5, 10)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(5))
    assert (out > 0).all()


def test_guide_example_parameter_counts() -> None:
    model = build_model(GUIDE, n_features=1, n_outputs=None)
    lstm, dense = model.layers
    assert sum(p.numel() for p in lstm.parameters()) == 4 * 128 * (1 + 128) + 2 * 4 * 128 == 67_072
    assert sum(p.numel() for p in dense.parameters()) == 128 * 10 + 10 == 1_290


def test_guide_example_one_adam_step_on_mse_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = build_model(GUIDE, n_features=1, n_outputs=10)
    x = batch(b=16, t=20, f=1)
    y = torch.softmax(torch.randn(16, 10, generator=torch.Generator().manual_seed(1)), dim=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = nn.functional.mse_loss(model(x), y)
    assert after.item() < loss.item()


def test_guide_example_summary() -> None:
    text = summary(build_model(GUIDE, n_features=1, n_outputs=None), n_features=1)
    assert "Input(shape=(None, 1))" in text
    lstm_row = next(line for line in text.splitlines() if "lstm (LSTM)" in line)
    assert lstm_row.split()[2:] == ["(None,", "128)", "67,072", "66,560"]
    dense_row = next(line for line in text.splitlines() if "dense (Dense)" in line)
    assert dense_row.split()[2:] == ["(None,", "10)", "1,290", "1,290"]
    assert "Total params: 68,362 (Keras: 67,850)" in text
    assert "Trainable params: 68,362" in text
    assert "Non-trainable params: 0" in text
    assert (
        "PyTorch's LSTM keeps two bias vectors (b_ih, b_hh): each lstm layer has 4 × units more parameters "
        "than Keras' count (Keras: 67,850)." in text
    )


# ------------------------------------------------------------------------------------------------------ shapes


def test_architecture_example_stacked_bidirectional_norms_and_dropout() -> None:
    model_spec = spec(
        {"lstm": {"units": 16, "return_sequences": True, "dropout": 0.2, "bidirectional": True}},
        {"layernorm": {}},
        {"lstm": {"units": 8}},
        {"batchnorm": {}},
        {"dropout": {"rate": 0.3}},
        {"dense": {"units": 6, "activation": "relu"}},
        {"dense": {}},
        l2=1e-4,
    )
    model = build_model(model_spec, n_features=3, n_outputs=12)
    model.train()
    assert model(batch()).shape == (4, 12)
    model.eval()
    assert model(batch()).shape == (4, 12)
    assert model.spec.layers[-1].dense.units == 12  # inferred from the task


def test_layers_after_a_sequence_keep_time_and_an_lstm_may_follow() -> None:
    model_spec = spec(
        {"lstm": {"units": 5, "return_sequences": True}},
        {"dense": {"units": 4, "activation": "tanh"}},
        {"batchnorm": {}},
        {"layernorm": {}},
        {"dropout": {"rate": 0.1}},
        {"lstm": {"units": 6, "return_sequences": True}},
    )
    model = build_model(model_spec, n_features=3, n_outputs=None)
    shapes = []
    x = batch()
    for layer in model.layers:
        x = layer(x)
        shapes.append(tuple(x.shape))
    assert shapes == [(4, 7, 5), (4, 7, 4), (4, 7, 4), (4, 7, 4), (4, 7, 4), (4, 7, 6)]


def test_the_last_dense_units_are_inferred_and_a_matching_one_is_kept() -> None:
    inferred = build_model(spec({"lstm": {"units": 4}}, {"dense": {}}), n_features=2, n_outputs=6)
    given = build_model(spec({"lstm": {"units": 4}}, {"dense": {"units": 6}}), n_features=2, n_outputs=6)
    assert inferred.out_features == given.out_features == 6
    assert inferred(batch(f=2)).shape == (4, 6)


def test_a_network_ending_in_an_lstm_of_the_right_width_needs_no_dense() -> None:
    model = build_model(spec({"lstm": {"units": 3, "bidirectional": True}}), n_features=2, n_outputs=6)
    assert model(batch(f=2)).shape == (4, 6)


# ---------------------------------------------------------------------------------- every argument honoured


def test_bidirectional_doubles_the_width_and_takes_each_directions_final_state() -> None:
    torch.manual_seed(0)
    last = build_model(spec({"lstm": {"units": 5, "bidirectional": True}}), n_features=3, n_outputs=None)
    every = build_model(
        spec({"lstm": {"units": 5, "bidirectional": True, "return_sequences": True}}), n_features=3, n_outputs=None
    )
    every.load_state_dict(last.state_dict())
    x = batch()
    sequence = every(x)  # (B, T, 2·H)
    assert sequence.shape == (4, 7, 10)
    # forward direction after the last step, backward direction after the first step (Keras' Bidirectional)
    torch.testing.assert_close(last(x), torch.cat([sequence[:, -1, :5], sequence[:, 0, 5:]], dim=1))


def test_lstm_return_sequences_false_is_the_last_step() -> None:
    torch.manual_seed(0)
    last = build_model(spec({"lstm": {"units": 5}}), n_features=3, n_outputs=None)
    every = build_model(spec({"lstm": {"units": 5, "return_sequences": True}}), n_features=3, n_outputs=None)
    every.load_state_dict(last.state_dict())
    x = batch()
    torch.testing.assert_close(last(x), every(x)[:, -1])


def test_lstm_input_dropout_is_active_in_train_only_and_shares_one_mask_over_time() -> None:
    torch.manual_seed(0)
    model = build_model(spec({"lstm": {"units": 8, "dropout": 0.5}}, {"dense": {}}), n_features=3, n_outputs=2)
    x = batch(b=32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))

    dropout = model.layers[0].input_dropout
    dropped = dropout(torch.ones(32, 50, 3)) == 0  # (B, T, F)
    assert dropped.any() and not dropped.all()
    assert (dropped == dropped[:, :1, :]).all()  # a dropped feature stays dropped at every step of its sample
    kept = dropout(torch.ones(32, 50, 3))
    assert set(kept.unique().tolist()) <= {0.0, 2.0}  # survivors scaled by 1 / (1 − rate)


def test_dropout_layer_is_active_in_train_only() -> None:
    model = build_model(spec({"lstm": {"units": 8}}, {"dropout": {"rate": 0.5}}), n_features=3, n_outputs=None)
    x = batch(b=32)
    model.eval()
    torch.testing.assert_close(model(x), model.layers[0](x))
    model.train()
    out = model(x)
    assert (out == 0).float().mean() > 0.3


REFERENCE_ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": lambda z: torch.softmax(z, dim=-1),
    "gelu": nn.functional.gelu,
    "elu": nn.functional.elu,
    "selu": nn.functional.selu,
    "softplus": nn.functional.softplus,
}


@pytest.mark.parametrize("activation", typing.get_args(Activation))
def test_every_dense_activation_is_applied(activation: str) -> None:
    model = build_model(
        spec({"lstm": {"units": 4, "return_sequences": True}}, {"dense": {"units": 5, "activation": activation}}),
        n_features=3,
        n_outputs=None,
    )
    hidden = model.layers[0](batch())  # (B, T, 4)
    dense = model.layers[1]
    torch.testing.assert_close(dense(hidden), REFERENCE_ACTIVATIONS[activation](dense.linear(hidden)))


def test_batchnorm_maps_keras_momentum_and_epsilon_and_normalises_each_feature() -> None:
    model = build_model(
        spec({"lstm": {"units": 4, "return_sequences": True}}, {"batchnorm": {"momentum": 0.9, "epsilon": 0.01}}),
        n_features=3,
        n_outputs=None,
    )
    norm = model.layers[1]
    assert norm.eps == 0.01
    hidden = model.layers[0](batch()).detach()  # (B, T, H)
    model.train()
    out = norm(hidden)
    # statistics over batch and time, per feature (the last axis)
    torch.testing.assert_close(out.mean(dim=(0, 1)), torch.zeros(4), atol=1e-5, rtol=0)
    # Keras: running = 0.9 · running + 0.1 · batch mean
    torch.testing.assert_close(norm.running_mean, 0.1 * hidden.mean(dim=(0, 1)))


def test_batchnorm_on_vectors_uses_its_running_statistics_in_eval() -> None:
    model = build_model(spec({"lstm": {"units": 4}}, {"batchnorm": {}}), n_features=3, n_outputs=None)
    model.eval()
    hidden = model.layers[0](batch())  # (B, H)
    torch.testing.assert_close(model(batch()), hidden / (1 + 1e-3) ** 0.5)  # fresh stats: mean 0, variance 1


def test_layernorm_epsilon_and_normalisation_over_features() -> None:
    model = build_model(
        spec({"lstm": {"units": 6, "return_sequences": True}}, {"layernorm": {"epsilon": 1e-5}}),
        n_features=3,
        n_outputs=None,
    )
    assert model.layers[1].eps == 1e-5
    out = model(batch())  # (B, T, 6)
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(4, 7), atol=1e-5, rtol=0)


def test_initialisation_follows_keras_defaults() -> None:
    torch.manual_seed(0)
    units, features = 6, 3
    model = build_model(spec({"lstm": {"units": units}}, {"dense": {"units": 2}}), n_features=features, n_outputs=2)
    lstm = model.layers[0].lstm
    glorot = (6 / (features + 4 * units)) ** 0.5
    assert lstm.weight_ih_l0.abs().max() <= glorot
    torch.testing.assert_close(lstm.weight_hh_l0.T @ lstm.weight_hh_l0, torch.eye(units))  # orthogonal (4H, H)
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0  # Keras' one bias: gates i, f, g, o
    torch.testing.assert_close(bias, torch.cat([torch.zeros(units), torch.ones(units), torch.zeros(2 * units)]))
    dense = model.layers[1].linear
    assert dense.weight.abs().max() <= (6 / (units + 2)) ** 0.5
    assert (dense.bias == 0).all()


# --------------------------------------------------------------------------------------------- shape rules


def test_first_layer_must_read_the_sequence() -> None:
    message = build_error(spec({"dense": {"units": 4}}, {"lstm": {"units": 4}}, {"dense": {}}))
    assert message == (
        "pipelines.sunspots.model.layers[0]: the first layer must be lstm, conv1d or branches "
        "(it reads the (batch, time, features) input), got dense"
    )


def test_lstm_after_a_single_vector_names_the_earlier_lstm() -> None:
    message = build_error(spec({"lstm": {"units": 4}}, {"dense": {"units": 3}}, {"lstm": {"units": 4}}, {"dense": {}}))
    assert message == (
        "pipelines.sunspots.model.layers[2].lstm: needs a sequence, but layers[0] emits one vector per sample; "
        "set return_sequences: true on pipelines.sunspots.model.layers[0].lstm"
    )


def test_forecast_must_end_with_one_vector_per_sample() -> None:
    message = build_error(spec({"lstm": {"units": 4}}, {"lstm": {"units": 12, "return_sequences": True}}))
    assert message.splitlines()[1:] == [
        (
            "  - pipelines.sunspots.model.layers[1].lstm: needs a sequence, but layers[0] emits one vector per "
            "sample; set return_sequences: true on pipelines.sunspots.model.layers[0].lstm"
        ),
        (
            "  - pipelines.sunspots.model.layers[1].lstm.return_sequences: a forecast needs one vector per sample "
            "at the end, but this last lstm emits a sequence; set return_sequences: false (or leave it out)"
        ),
    ]
    alone = build_error(spec({"lstm": {"units": 12, "return_sequences": True}}))
    assert alone == (
        "pipelines.sunspots.model.layers[0].lstm.return_sequences: a forecast needs one vector per sample at the "
        "end, but this last lstm emits a sequence; set return_sequences: false (or leave it out)"
    )


def test_a_final_sequence_is_allowed_without_a_task() -> None:
    model = build_model(spec({"lstm": {"units": 4, "return_sequences": True}}, {"dense": {"units": 2}}), 3, None)
    assert model(batch()).shape == (4, 7, 2)


def test_dense_without_units_only_last() -> None:
    message = build_error(spec({"lstm": {"units": 4}}, {"dense": {}}, {"dense": {}}))
    assert message == (
        "pipelines.sunspots.model.layers[1].dense.units: is required on every dense layer but the last "
        "(only the last one's is inferred from the task)"
    )


def test_dense_units_not_matching_the_task() -> None:
    message = build_error(spec({"lstm": {"units": 4}}, {"dense": {"units": 10}}))
    assert message == (
        "pipelines.sunspots.model.layers[1].dense.units: the task needs 12 outputs (horizon 12 × 1 target), got 10"
    )
    with pytest.raises(ConfigError, match=r"^model\.layers\[1\]\.dense\.units: the task needs 12 outputs, got 10$"):
        build_model(spec({"lstm": {"units": 4}}, {"dense": {"units": 10}}, {"layernorm": {}}), 1, 12)


def test_ending_in_an_lstm_of_the_wrong_width() -> None:
    message = build_error(spec({"lstm": {"units": 4}}, {"dropout": {"rate": 0.1}}))
    assert message == (
        "pipelines.sunspots.model.layers[0].lstm: the network ends with this layer's 4 values per sample, but the "
        "task needs 12 outputs (horizon 12 × 1 target); end it with `- dense: {}` (its units are inferred)"
    )


def test_the_last_dense_needs_units_without_a_task() -> None:
    message = build_error(spec({"lstm": {"units": 4}}, {"dense": {}}), n_outputs=None)
    assert message == (
        "pipelines.sunspots.model.layers[1].dense.units: is required when no task gives the number of outputs"
    )


def test_every_broken_rule_is_reported_at_once() -> None:
    error = build_error(spec({"dropout": {"rate": 0.1}}, {"dense": {}}, {"dense": {"units": 3}}))
    assert error.startswith("3 problems\n")


# ------------------------------------------------------------------------------------------- regularisation


def test_regularization_penalty_by_hand() -> None:
    # weight matrices: lstm weight_ih (4, 1) and weight_hh (4, 1), dense weight (1, 1): 9 entries of −0.5;
    # the biases and the layernorm scale (also −0.5 here) must not count
    model = build_model(
        spec({"lstm": {"units": 1}}, {"layernorm": {}}, {"dense": {"units": 1}}, l1=0.1, l2=0.01),
        n_features=1,
        n_outputs=1,
    )
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(-0.5)
    penalty = model.regularization_penalty()
    torch.testing.assert_close(penalty, torch.tensor(0.1 * 9 * 0.5 + 0.01 * 9 * 0.25))
    penalty.backward()
    assert model.layers[2].linear.weight.grad.item() == pytest.approx(0.1 * -1 + 0.01 * 2 * -0.5)
    assert model.layers[2].linear.bias.grad is None


def test_regularization_penalty_is_zero_without_l1_and_l2() -> None:
    model = build_model(GUIDE, n_features=1, n_outputs=10)
    assert model.regularization_penalty().item() == 0.0


# ------------------------------------------------------------------------------------------------- summary


def test_summary_of_a_stacked_model_with_batchnorm() -> None:
    model = build_model(
        spec(
            {"lstm": {"units": 64, "return_sequences": True, "bidirectional": True}},
            {"lstm": {"units": 32}},
            {"batchnorm": {}},
            {"dense": {}},
        ),
        n_features=3,
        n_outputs=12,
    )
    model.train()
    text = summary(model, n_features=3)
    assert model.training  # the summary's forward pass leaves the mode as it was
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if "(" in line and line.startswith(" ")}
    bidirectional = 2 * (4 * 64 * (3 + 64) + 2 * 4 * 64)
    assert rows["bidirectional"] == [
        "(Bidirectional)",
        "(None,",
        "None,",
        "128)",
        f"{bidirectional:,}",
        f"{bidirectional - 2 * 4 * 64:,}",
    ]
    lstm = 4 * 32 * (128 + 32) + 2 * 4 * 32
    assert rows["lstm"] == ["(LSTM)", "(None,", "32)", f"{lstm:,}", f"{lstm - 4 * 32:,}"]
    assert rows["batch_normalization"] == ["(BatchNormalization)", "(None,", "32)", "128", "128"]
    assert rows["dense"] == ["(Dense)", "(None,", "12)", "396", "396"]
    total = bidirectional + lstm + 128 + 396
    keras = total - 2 * 4 * 64 - 4 * 32
    assert f"Total params: {total:,} (Keras: {keras:,})" in text
    assert f"Trainable params: {total - 64:,}" in text
    assert "Non-trainable params: 64" in text  # batchnorm's running mean and variance
    assert "A bidirectional layer has them once per direction." in text


def test_summary_names_repeated_layers_like_keras() -> None:
    model = build_model(
        spec({"lstm": {"units": 4, "return_sequences": True}}, {"lstm": {"units": 4}}, {"dense": {}}),
        n_features=2,
        n_outputs=3,
    )
    text = summary(model, n_features=2)
    assert " lstm (LSTM) " in text and " lstm_1 (LSTM) " in text
    assert "(None, None, 4)" in text


def test_a_model_rebuilds_from_its_resolved_spec() -> None:
    model = build_model(spec({"lstm": {"units": 4}}, {"dense": {}}), n_features=2, n_outputs=3)
    again = LSTMNet(model.spec, model.n_features)
    again.load_state_dict(model.state_dict())
    x = batch(f=2)
    torch.testing.assert_close(again(x), model(x))


# ------------------------------------------------------------------------------------- variable-length batches

PACKING_MODELS = {
    "single": [{"lstm": {"units": 6}}, {"dense": {"units": 3, "activation": "softmax"}}],
    "stacked": [{"lstm": {"units": 6, "return_sequences": True}}, {"lstm": {"units": 5}}, {"dense": {"units": 3}}],
    "bidirectional": [
        {"lstm": {"units": 4, "return_sequences": True, "bidirectional": True}},
        {"lstm": {"units": 5, "bidirectional": True}},
        {"dense": {"units": 3}},
    ],
    "norms and dense over time": [
        {"lstm": {"units": 6, "return_sequences": True}},
        {"batchnorm": {}},
        {"dense": {"units": 4, "activation": "tanh"}},
        {"layernorm": {}},
        {"dropout": {"rate": 0.3}},
        {"lstm": {"units": 5}},
        {"batchnorm": {}},
        {"dense": {"units": 3}},
    ],
}


def padded_batch(lengths: list[int], f: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random steps, zero after each sample's length: x (B, T_max, F) and lengths (B,)."""
    x = batch(b=len(lengths), t=max(lengths), f=f, seed=seed)
    for row, length in enumerate(lengths):
        x[row, length:] = 0
    return x, torch.tensor(lengths)


def trained_norm_statistics(model: LSTMNet) -> None:
    """Give batchnorm running statistics that are not the identity, so eval mode is a real test of them."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(*padded_batch([9, 4, 6, 2], seed=seed + 10))
    model.eval()


@pytest.mark.parametrize("layers", PACKING_MODELS.values(), ids=PACKING_MODELS.keys())
def test_a_samples_output_does_not_depend_on_the_rest_of_its_batch(layers: list[dict[str, Any]]) -> None:
    torch.manual_seed(0)
    model = build_model(spec(*layers), n_features=3, n_outputs=3)
    trained_norm_statistics(model)
    x, lengths = padded_batch([4, 11, 7, 4, 1])  # sample 0 padded by 7 steps, sample 4 by 10
    with torch.no_grad():
        together = model(x, lengths)  # (B, 3)
        for row, length in enumerate(lengths.tolist()):
            alone = model(x[row : row + 1, :length])  # (1, length, F), no padding and no lengths
            assert torch.allclose(together[row : row + 1], alone, rtol=0, atol=1e-6), row
            assert torch.allclose(model.logits(x, lengths)[row : row + 1], model.logits(x[row : row + 1, :length]),
                                  rtol=0, atol=1e-6), row  # fmt: skip


def test_full_lengths_give_the_unpacked_result() -> None:
    torch.manual_seed(0)
    model = build_model(spec(*PACKING_MODELS["bidirectional"]), n_features=3, n_outputs=3)
    model.eval()
    x = batch(b=3, t=5)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([5, 5, 5])), model(x))


def test_a_sequence_output_is_zero_at_padded_steps_and_unchanged_before() -> None:
    torch.manual_seed(0)
    layers = [{"lstm": {"units": 4, "return_sequences": True}}, {"layernorm": {}}, {"dense": {"units": 2}}]
    model = build_model(spec(*layers), n_features=3, n_outputs=None)
    with torch.no_grad():
        model.layers[2].linear.bias.fill_(0.5)  # a bias would fill the padding if it were not masked
    x, lengths = padded_batch([6, 3])
    with torch.no_grad():
        out = model(x, lengths)  # (B, T, 2)
        assert out.shape == (2, 6, 2)
        assert (out[1, 3:] == 0).all() and (out[1, :3] != 0).all()
        torch.testing.assert_close(out[1:, :3], model(x[1:, :3]), rtol=0, atol=1e-6)


def test_batchnorm_statistics_leave_out_padded_steps() -> None:
    torch.manual_seed(0)
    model = build_model(
        spec({"lstm": {"units": 4, "return_sequences": True}}, {"batchnorm": {"momentum": 0.5}}),
        n_features=3,
        n_outputs=None,
    )
    x, lengths = padded_batch([5, 2, 3])
    with torch.no_grad():
        hidden = model.layers[0](x, lengths)  # (B, T, H), zero at padded steps
        valid = torch.cat([hidden[row, :length] for row, length in enumerate(lengths.tolist())])  # (10, H)
        model.train()
        out = model(x, lengths)
    norm = model.layers[1]
    torch.testing.assert_close(norm.running_mean, 0.5 * valid.mean(dim=0))  # Keras momentum 0.5: half the batch
    torch.testing.assert_close(norm.running_var, 0.5 + 0.5 * valid.var(dim=0))  # unbiased, over the 10 valid steps
    normalised = torch.cat([out[row, :length] for row, length in enumerate(lengths.tolist())])
    torch.testing.assert_close(normalised.mean(dim=0), torch.zeros(4), rtol=0, atol=1e-5)
    assert (out[1, 2:] == 0).all()


def test_logits_leave_out_only_the_output_softmax() -> None:
    torch.manual_seed(0)
    model = build_model(GUIDE, n_features=1, n_outputs=10)
    x, lengths = padded_batch([5, 3], f=1)
    torch.testing.assert_close(torch.softmax(model.logits(x, lengths), dim=-1), model(x, lengths))
    assert not torch.allclose(model.logits(x, lengths).sum(dim=1), torch.ones(2))

    hidden_softmax = spec(
        {"lstm": {"units": 4, "return_sequences": True}},
        {"dense": {"units": 3, "activation": "softmax"}},
        {"lstm": {"units": 3}},
    )
    model = build_model(hidden_softmax, n_features=1, n_outputs=3)  # ends in an lstm: no output softmax to remove
    assert model.softmax_head is None
    torch.testing.assert_close(model.logits(x, lengths), model(x, lengths))


# ------------------------------------------------------------------------------------------------- embedding

TEXT = spec({"embedding": {"dim": 5}}, {"lstm": {"units": 6}}, {"dense": {"activation": "softmax"}})


def token_batch(lengths: list[int], vocab: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids as the sequence store gives them: x (B, T_max, 1) float, id 0 (padding) after each length."""
    ids = torch.randint(2, vocab, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(seed))
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    return ids.float().unsqueeze(-1), torch.tensor(lengths)  # (B, T) → (B, T, 1)


def test_embedding_turns_ids_into_vectors_with_padding_at_zero() -> None:
    torch.manual_seed(0)
    model = build_model(TEXT, n_features=20, n_outputs=2)  # n_features: the vocabulary size
    embedding = model.layers[0].embedding
    assert (embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx) == (20, 5, 0)
    assert (embedding.weight[0] == 0).all() and embedding.weight[1:].abs().max() <= 0.05  # Keras' uniform ±0.05
    x, lengths = token_batch([4, 2])
    vectors = model.layers[0](x)  # (B, T, 5)
    assert vectors.shape == (2, 4, 5)
    torch.testing.assert_close(vectors[1, 1], embedding.weight[int(x[1, 1, 0])])
    assert (vectors[1, 2:] == 0).all()
    assert model(x, lengths).shape == (2, 2)


def test_a_frozen_embedding_gets_no_gradient_and_keeps_its_vectors() -> None:
    torch.manual_seed(0)
    frozen = spec({"embedding": {"dim": 5, "frozen": True}}, {"lstm": {"units": 6}}, {"dense": {}})
    model = build_model(frozen, n_features=20, n_outputs=2)
    before = model.layers[0].embedding.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, lengths = token_batch([4, 3])
    model(x, lengths).square().sum().backward()
    optimizer.step()
    assert not model.layers[0].embedding.weight.requires_grad
    torch.testing.assert_close(model.layers[0].embedding.weight, before, rtol=0, atol=0)
    assert model.layers[1].lstm.weight_ih_l0.grad is not None

    trainable = build_model(TEXT, n_features=20, n_outputs=2)
    trainable(x, lengths).square().sum().backward()
    grad = trainable.layers[0].embedding.weight.grad
    assert grad[0].abs().sum() == 0 and grad[1:].abs().sum() > 0  # padding's vector never learns


def test_a_texts_output_does_not_depend_on_the_rest_of_its_batch() -> None:
    torch.manual_seed(0)
    layers = [{"embedding": {"dim": 4}}, {"lstm": {"units": 5, "return_sequences": True, "bidirectional": True}},
              {"lstm": {"units": 5}}, {"dense": {"units": 3}}]  # fmt: skip
    model = build_model(spec(*layers), n_features=20, n_outputs=3)
    model.eval()
    x, lengths = token_batch([3, 9, 1, 6])
    with torch.no_grad():
        together = model(x, lengths)
        for row, length in enumerate(lengths.tolist()):
            torch.testing.assert_close(together[row : row + 1], model(x[row : row + 1, :length]), rtol=0, atol=1e-6)


def test_embedding_only_as_the_first_layer_and_an_lstm_must_read_its_vectors() -> None:
    message = build_error(spec({"lstm": {"units": 4, "return_sequences": True}}, {"embedding": {"dim": 3}},
                               {"lstm": {"units": 4}}, {"dense": {}}))  # fmt: skip
    assert message == (
        "pipelines.sunspots.model.layers[1].embedding: an embedding reads token ids, so it can only be the first layer"
    )
    assert build_error(spec({"embedding": {"dim": 3}}, {"dense": {"units": 4}}, {"dense": {}})) == (
        "pipelines.sunspots.model.layers[1]: the first layer after an embedding must be lstm, conv1d or branches "
        "(it reads the (batch, time, features) input), got dense"
    )


def test_the_penalty_leaves_the_embedding_out() -> None:
    penalized = spec({"embedding": {"dim": 5}}, {"lstm": {"units": 6}}, {"dense": {}}, l2=0.1)
    model = build_model(penalized, n_features=20, n_outputs=2)
    lstm, dense = model.layers[1].lstm, model.layers[2].linear
    expected = 0.1 * sum(w.square().sum() for w in (lstm.weight_ih_l0, lstm.weight_hh_l0, dense.weight))
    torch.testing.assert_close(model.regularization_penalty(), expected)


def test_summary_of_a_text_model_shows_token_ids_and_the_embedding() -> None:
    model = build_model(spec({"embedding": {"dim": 8, "frozen": True}}, {"lstm": {"units": 4}}, {"dense": {}}),
                        n_features=1000, n_outputs=2)  # fmt: skip
    text = summary(model, n_features=1000)
    assert "Input(shape=(None,)) of token ids, vocabulary 1,000" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if "(" in line and line.startswith(" ")}
    assert rows["embedding"] == ["(Embedding)", "(None,", "None,", "8)", "8,000", "8,000"]
    assert "Non-trainable params: 8,000" in text  # frozen
