"""The layers beyond lstm and dense: conv1d, pools over time, attention, activation, embedding dropout and branches
(LSTM-FCN): shapes, Keras parameter counts, padding that never leaks into a result, named shape errors, the
default classifiers, and a branches model that learns."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import Patterns
from torch import nn

from lstmflow.config import ModelSpec, PipelineSpec
from lstmflow.config.model import SEQUENCE_CLASSIFIER_LAYERS, TEXT_CLASSIFIER_LAYERS
from lstmflow.errors import ConfigError, DataError
from lstmflow.models.kernel_build import compiled_kernels
from lstmflow.models.lstm import LSTMNet, build_model, summary
from lstmflow.models.shapes import shortest_input

torch.set_num_threads(1)

WHERE = "pipelines.shapes.model"


def spec(*layers: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate({"layers": list(layers)})


def build(*layers: dict[str, Any], n_features: int = 3, n_outputs: int | None = 2, **kwargs: Any) -> LSTMNet:
    return build_model(spec(*layers), n_features=n_features, n_outputs=n_outputs, where=WHERE, **kwargs)


def build_error(*layers: dict[str, Any], n_outputs: int | None = 2, per_step: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build(*layers, n_outputs=n_outputs, per_step=per_step)
    return caught.value.problems


def padded_batch(lengths: list[int], f: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random steps (all negative when asked), zero after each sample's length: x (B, T_max, F), lengths (B,)."""
    x = torch.randn(len(lengths), max(lengths), f, generator=torch.Generator().manual_seed(seed))
    for row, length in enumerate(lengths):
        x[row, length:] = 0
    return x, torch.tensor(lengths)


def rows_of(text: str) -> dict[str, list[str]]:
    """The summary's layer rows by layer name: the type, the shape's parts, Param # and Keras Param #."""
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if "(" in line and line.startswith(" ")}


CONV = {"conv1d": {"filters": 5, "kernel_size": 4}}
CONV_BLOCK = [{"conv1d": {"filters": 6, "kernel_size": 3}}, {"batchnorm": {}}, {"activation": "relu"}]


# ---------------------------------------------------------------------------------------------- conv1d


@pytest.mark.parametrize(
    ("args", "steps_out"),
    [({}, 9), ({"padding": "valid"}, 6), ({"strides": 2}, 5), ({"strides": 2, "padding": "valid"}, 3)],
)
def test_conv1d_output_steps_follow_padding_and_strides(args: dict[str, Any], steps_out: int) -> None:
    model = build({"conv1d": {"filters": 5, "kernel_size": 4, **args}}, n_outputs=None)
    out, lengths = model.layers[0](torch.randn(2, 9, 3))
    assert out.shape == (2, steps_out, 5) and lengths is None
    padded, _ = padded_batch([9, 4])
    _, lengths = model.layers[0](padded, torch.tensor([9, 4]))
    alone, _ = model.layers[0](padded[1:, :4])
    assert lengths.tolist() == [steps_out, alone.shape[1]]


def test_conv1d_same_is_kerass_zero_padded_convolution() -> None:
    torch.manual_seed(0)
    model = build({"conv1d": {"filters": 5, "kernel_size": 3, "activation": "tanh"}}, n_outputs=None)
    conv = model.layers[0].conv
    x = torch.randn(2, 7, 3)
    expected = torch.tanh(nn.functional.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=1)).transpose(1, 2)
    torch.testing.assert_close(model(x), expected)
    assert (conv.bias == 0).all()


def test_conv1d_and_batchnorm_keras_parameter_counts_in_the_summary() -> None:
    model = build(CONV, {"batchnorm": {}}, {"activation": "relu"}, {"global_average_pool": {}}, {"dense": {}})
    rows = rows_of(summary(model, n_features=3))
    conv = 4 * 3 * 5 + 5  # kernel_size × input features × filters + filters
    assert rows["conv1d"] == ["(Conv1D)", "(None,", "None,", "5)", f"{conv}", f"{conv}"]
    assert rows["batch_normalization"] == ["(BatchNormalization)", "(None,", "None,", "5)", "20", "20"]  # 4 × 5
    assert rows["activation"] == ["(Activation)", "(None,", "None,", "5)", "0", "0"]
    assert rows["global_average_pooling1d"] == ["(GlobalAveragePooling1D)", "(None,", "5)", "0", "0"]
    assert rows["dense"] == ["(Dense)", "(None,", "2)", "12", "12"]


def test_batchnorm_after_conv1d_normalises_each_filter_over_the_valid_steps() -> None:
    torch.manual_seed(0)
    model = build(CONV, {"batchnorm": {}}, n_outputs=None)
    model.train()
    x, lengths = padded_batch([8, 3, 5])
    out = model(x, lengths)  # (B, T, 5)
    valid = torch.cat([out[row, :length] for row, length in enumerate(lengths.tolist())])  # (16, 5)
    torch.testing.assert_close(valid.mean(dim=0), torch.zeros(5), rtol=0, atol=1e-5)
    assert (out[1, 3:] == 0).all()


def test_the_summary_feeds_enough_steps_for_valid_kernels() -> None:
    layers = [{"conv1d": {"filters": 4, "kernel_size": 8, "padding": "valid"}}, {"max_pool1d": {"pool_size": 3}}]
    assert shortest_input(spec(*layers).layers) == 10  # 3 steps for the pool, then 3 + 8 − 1 for the kernel
    model = build(*layers, {"global_max_pool": {}}, {"dense": {}})
    assert "(None, None, 4)" in summary(model, n_features=3)


def test_a_sample_too_short_for_a_valid_kernel_is_a_named_data_error() -> None:
    model = build(
        {"conv1d": {"filters": 4, "kernel_size": 5, "padding": "valid"}}, {"global_max_pool": {}}, {"dense": {}}
    )
    x, lengths = padded_batch([9, 3])
    with pytest.raises(DataError, match=r"^pipelines\.shapes\.model\.layers\[0\]\.conv1d: a sample of length 3 gives"):
        model(x, lengths)


# ----------------------------------------------------------------------------------------------- pools


def test_max_and_average_pooling_windows_by_hand() -> None:
    x = torch.tensor([[1.0, -2.0, 3.0, 4.0, -5.0]]).unsqueeze(-1)  # (1, 5, 1)
    maxed = build({"conv1d": {"filters": 1, "kernel_size": 1}}, {"max_pool1d": {}}, n_outputs=None).layers[1]
    assert maxed(x)[0].flatten().tolist() == [1.0, 4.0]  # valid: two whole windows
    same = build(CONV, {"average_pool1d": {"pool_size": 2, "padding": "same"}}, n_outputs=None).layers[1]
    assert same(x)[0].flatten().tolist() == [-0.5, 3.5, -5.0]  # the last window holds one step: its mean is it
    strided = build(CONV, {"max_pool1d": {"pool_size": 3, "strides": 1}}, n_outputs=None).layers[1]
    assert strided(x)[0].flatten().tolist() == [3.0, 4.0, 4.0]


def test_pools_never_read_padding() -> None:
    x = -torch.rand(2, 6, 1) - 1  # every value below −1: a zero of padding would win any max
    x[1, 3:] = 0
    lengths = torch.tensor([6, 3])
    for kind in ("max_pool1d", "average_pool1d"):
        pool = build(CONV, {kind: {"pool_size": 2, "padding": "same"}}, n_outputs=None).layers[1]
        out, out_lengths = pool(x, lengths)
        alone, _ = pool(x[1:, :3])
        assert out_lengths.tolist() == [3, 2]
        torch.testing.assert_close(out[1:, :2], alone)
    model = build(CONV, {"global_max_pool": {}}, n_outputs=None)
    pooled = model.layers[1](x, lengths)
    assert (pooled[1] == x[1, :3].amax(dim=0)).all()
    average = build(CONV, {"global_average_pool": {}}, n_outputs=None).layers[1]
    torch.testing.assert_close(average(x, lengths)[1], x[1, :3].mean(dim=0))


def test_attention_pool_is_a_weighted_mean_over_valid_steps_with_its_own_parameters() -> None:
    torch.manual_seed(0)
    model = build(CONV, {"attention_pool": {"units": 7}}, {"dense": {}})
    rows = rows_of(summary(model, n_features=3))
    assert rows["attention_pool"] == ["(AttentionPool)", "(None,", "5)", "49", "49"]  # 5 × 7 + 7 + 7
    pool = model.layers[1]
    x = torch.randn(2, 6, 5)
    out = pool(x, torch.tensor([6, 2]))
    torch.testing.assert_close(out[1:], pool(x[1:, :2]))
    low, high = x[1, :2].amin(dim=0), x[1, :2].amax(dim=0)  # a convex combination of the valid steps only
    assert ((out[1] >= low - 1e-6) & (out[1] <= high + 1e-6)).all()


# --------------------------------------------------------------------------------------- embedding dropout


def test_embedding_dropout_zeroes_whole_token_vectors_in_training_only() -> None:
    torch.manual_seed(0)
    model = build({"embedding": {"dim": 8, "dropout": 0.5}}, {"lstm": {"units": 4}}, {"dense": {}}, n_features=50)
    embedding = model.layers[0]
    ids = torch.randint(1, 50, (64, 30, 1)).float()
    model.train()
    vectors = embedding(ids)  # (B, T, 8)
    dropped = (vectors == 0).all(dim=-1)  # (B, T): a whole vector
    assert 0.4 < dropped.float().mean() < 0.6
    assert ((vectors == 0) == dropped.unsqueeze(-1)).all()  # no vector is partly zeroed
    kept = ~dropped
    torch.testing.assert_close(vectors[kept], 2 * embedding.embedding(ids.squeeze(-1).long())[kept])
    model.eval()
    torch.testing.assert_close(embedding(ids), embedding.embedding(ids.squeeze(-1).long()))


# ---------------------------------------------------------------------------------------------- branches

LSTM_FCN = [
    {
        "branches": [
            [{"lstm": {"units": 4}}, {"dropout": {"rate": 0.8}}],
            [*CONV_BLOCK, {"conv1d": {"filters": 8, "kernel_size": 2}}, {"batchnorm": {}}, {"activation": "relu"},
             {"global_average_pool": {}}],
        ]
    },
    {"dense": {"activation": "softmax"}},
]  # fmt: skip


def test_lstm_fcn_summary_lists_each_branch_then_the_concatenation() -> None:
    model = build(*LSTM_FCN, n_outputs=3)
    text = summary(model, n_features=3)
    rows = rows_of(text)
    lstm = 4 * 4 * (3 + 4) + 2 * 4 * 4
    assert rows["lstm"] == ["(LSTM)", "(None,", "4)", f"{lstm:,}", f"{lstm - 4 * 4:,}"]
    assert rows["conv1d"][-2:] == [f"{3 * 3 * 6 + 6}"] * 2 and rows["conv1d_1"][-2:] == [f"{2 * 6 * 8 + 8}"] * 2
    assert rows["batch_normalization_1"] == ["(BatchNormalization)", "(None,", "None,", "8)", "32", "32"]
    assert rows["concatenate"] == ["(Concatenate)", "(None,", "12)", "0", "0"]  # 4 + 8 features
    assert rows["dense"][-1] == f"{12 * 3 + 3}"
    names = [line.split()[0] for line in text.splitlines() if line.startswith(" ") and "(" in line][1:]
    assert names.index("lstm") < names.index("conv1d") < names.index("concatenate") < names.index("dense")
    total = sum(p.numel() for p in model.parameters()) + 2 * (6 + 8)  # and the running means and variances
    assert f"Total params: {total:,} (Keras: {total - 4 * 4:,})" in text


def test_branches_concatenate_sequences_step_by_step() -> None:
    layers = [
        {"branches": [[{"lstm": {"units": 4, "return_sequences": True}}], [CONV]]},
        {"lstm": {"units": 3}},
        {"dense": {}},
    ]
    model = build(*layers)
    x = torch.randn(2, 7, 3)
    joined, _ = model.layers[0](x)
    assert joined.shape == (2, 7, 9)
    torch.testing.assert_close(joined[..., :4], model.layers[0].branches[0][0](x))
    assert model(x).shape == (2, 2)


PACKING_MODELS: dict[str, list[dict[str, Any]]] = {
    "lstm-fcn": LSTM_FCN,
    "conv, strides and pools, then lstm (CNN-LSTM)": [
        {"conv1d": {"filters": 6, "kernel_size": 3, "strides": 2, "activation": "relu"}},
        {"batchnorm": {}},
        {"max_pool1d": {"pool_size": 2, "padding": "same"}},
        {"conv1d": {"filters": 4, "kernel_size": 2, "padding": "valid"}},
        {"average_pool1d": {"pool_size": 1}},
        {"lstm": {"units": 5, "bidirectional": True}},
        {"dense": {"units": 3}},
    ],
    "bidirectional lstm, global max pool": [
        {"lstm": {"units": 4, "bidirectional": True, "return_sequences": True}},
        {"global_max_pool": {}},
        {"dense": {"units": 3}},
    ],
    "attention over a sequence branch pair": [
        {"branches": [[{"lstm": {"units": 4, "return_sequences": True}}], [*CONV_BLOCK]]},
        {"layernorm": {}},
        {"attention_pool": {}},
        {"dense": {"units": 3}},
    ],
}


@pytest.mark.parametrize("layers", PACKING_MODELS.values(), ids=PACKING_MODELS.keys())
def test_a_samples_output_does_not_depend_on_the_rest_of_its_batch(layers: list[dict[str, Any]]) -> None:
    torch.manual_seed(0)
    model = build(*layers, n_outputs=3)
    model.train()
    with torch.no_grad():
        for seed in range(3):  # running statistics that are not the identity
            model(*padded_batch([9, 12, 8, 10], seed=seed + 10))
    model.eval()
    x, lengths = padded_batch([8, 13, 9, 11, 16])  # 8 steps leave the CNN-LSTM's lstm 1 step
    with torch.no_grad():
        together = model(x, lengths)
        for row, length in enumerate(lengths.tolist()):
            alone = model(x[row : row + 1, :length])
            torch.testing.assert_close(together[row : row + 1], alone, rtol=0, atol=1e-5)


def test_a_texts_prediction_with_the_default_text_layers_does_not_depend_on_its_batch() -> None:
    torch.manual_seed(0)
    model = build(*TEXT_CLASSIFIER_LAYERS, n_features=30, n_outputs=4)
    model.eval()
    ids = torch.randint(2, 30, (3, 8)).float()
    ids[1, 3:] = 0
    lengths = torch.tensor([8, 3, 8])
    with torch.no_grad():
        torch.testing.assert_close(model(ids.unsqueeze(-1), lengths)[1:2], model(ids[1:2, :3].unsqueeze(-1)))


@pytest.mark.skipif(compiled_kernels() is None, reason="needs a C++ compiler")
def test_the_compiled_lstm_kernel_runs_an_lstm_inside_a_branch() -> None:
    torch.manual_seed(0)
    fast = build(*LSTM_FCN, n_outputs=3, lstm_kernel="lstmflow")
    slow = build(*LSTM_FCN, n_outputs=3, lstm_kernel="torch")
    slow.load_state_dict(fast.state_dict())
    x, lengths = padded_batch([6, 4, 5])
    fast.train()
    slow.train()
    torch.manual_seed(1)
    out_fast = fast(x, lengths)
    torch.manual_seed(1)
    out_slow = slow(x, lengths)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-5)
    out_fast.sum().backward()
    assert fast.lstm_kernels_trained() == ["lstmflow"]
    assert fast.layers[0].branches[0][0].lstm.weight_hh_l0.grad is not None


def test_a_branches_model_learns_a_tiny_set() -> None:
    """Two classes that only the order of the steps tells apart (rising or falling ramps with noise)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(6, 14, (48,), generator=generator)
    ramps = torch.arange(14.0) / 13 - 0.5
    labels = torch.arange(48) % 2
    x = torch.where(labels[:, None] == 0, ramps, -ramps).unsqueeze(-1).clone()  # (48, 14, 1)
    x += 0.05 * torch.randn(x.shape, generator=generator)
    for row, length in enumerate(lengths.tolist()):
        x[row, length:] = 0
    model = build(*LSTM_FCN, n_features=1, n_outputs=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(40):
        loss = nn.functional.cross_entropy(model.logits(x, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x, lengths).argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.9
    conv = model.layers[0].branches[1][0].conv.weight
    assert model.regularization_penalty().item() == 0.0 and conv.dim() == 3


def test_the_penalty_includes_conv_kernels_inside_branches() -> None:
    model = build_model(spec(*LSTM_FCN).model_copy(update={"l2": 0.5}), n_features=3, n_outputs=3)
    kernels = [p for p in model.parameters() if p.dim() >= 2]
    torch.testing.assert_close(model.regularization_penalty(), 0.5 * sum(p.square().sum() for p in kernels))
    assert any(p.dim() == 3 for p in kernels)  # the conv1d kernels (filters, features, kernel_size)


def test_a_branches_spec_dumps_and_validates_again() -> None:
    written = spec(*LSTM_FCN)
    again = ModelSpec.model_validate(written.model_dump(mode="json"))
    assert again == written
    assert again.layers[0].branches[1][2].activation.activation == "relu"  # `- activation: relu` shorthand


# ---------------------------------------------------------------------------------------- shape rules


def test_a_layer_over_time_after_one_vector_per_sample_names_what_collapsed_time() -> None:
    assert build_error(CONV, {"global_max_pool": {}}, CONV, {"dense": {}}) == [
        (
            f"{WHERE}.layers[2].conv1d: needs a sequence, but layers[1] emits one vector per sample; put "
            f"{WHERE}.layers[1].global_max_pool after this layer"
        )
    ]
    assert build_error({"lstm": {"units": 4}}, {"max_pool1d": {}}, {"dense": {}})[0] == (
        f"{WHERE}.layers[1].max_pool1d: needs a sequence, but layers[0] emits one vector per sample; set "
        f"return_sequences: true on {WHERE}.layers[0].lstm"
    )


def test_a_classifier_must_pool_a_sequence_before_its_head() -> None:
    assert build_error(CONV, {"dense": {}}) == [
        (
            f"{WHERE}.layers[0].conv1d: the task needs one vector per sample at the end, but the network still emits a "
            "sequence after this layer; follow it with a global pool (e.g. `- global_average_pool: {}`)"
        )
    ]


def test_branches_must_end_alike() -> None:
    problems = build_error({"branches": [[{"lstm": {"units": 4}}], [CONV]]}, {"dense": {}})
    assert problems[0] == (
        f"{WHERE}.layers[0].branches: branches [0] end in one vector per sample but branches [1] in a sequence; "
        "concatenation needs them alike: end each with a global pool (e.g. `- global_average_pool: {}`) or keep "
        "each a sequence"
    )


def test_sequence_branches_may_not_change_the_number_of_steps() -> None:
    layers = [
        {"branches": [[{"lstm": {"units": 4, "return_sequences": True}}], [CONV, {"max_pool1d": {}}]]},
        {"global_max_pool": {}},
        {"dense": {}},
    ]
    assert build_error(*layers) == [
        (
            f"{WHERE}.layers[0].branches[1][1].max_pool1d: changes the number of steps, so this branch's sequence "
            "cannot be joined step by step with the others; use strides 1 and padding same here, or end every branch "
            "with a global pool"
        )
    ]


def test_branch_rules_name_the_layer_inside_the_branch() -> None:
    problems = build_error(
        {"branches": [[{"dropout": {"rate": 0.1}}, {"lstm": {"units": 4}}], [{"lstm": {"units": 4, "stateful": True}},
                      {"dense": {}}]]},
        {"dense": {}},
    )  # fmt: skip
    assert problems == [
        (
            f"{WHERE}.layers[0].branches[0][0]: a branch that reads the input must start with lstm, conv1d or "
            "branches, got dropout"
        ),
        (
            f"{WHERE}.layers[0].branches[1][0].lstm.stateful: a stateful lstm must be a layer of the model, not of a "
            "branch"
        ),
        (
            f"{WHERE}.layers[0].branches[1][1].dense.units: is required on every dense layer but the last (only the "
            "last one's is inferred from the task)"
        ),
    ]


def test_ending_in_conv_filters_or_branches_that_do_not_fit_the_task() -> None:
    problems = build_error(*LSTM_FCN[:1], n_outputs=3)
    assert problems == [
        (
            f"{WHERE}.layers[0].branches: the network ends with the concatenated branches, but the task needs 3 "
            "outputs; end it with `- dense: {}` (its units are inferred)"
        )
    ]


def test_a_language_model_takes_no_layers_over_time() -> None:
    problems = build_error(
        {"embedding": {"dim": 4}}, {"conv1d": {"filters": 4, "kernel_size": 2}},
        {"lstm": {"units": 4, "return_sequences": True}}, {"dense": {}}, n_outputs=9, per_step=True,
    )  # fmt: skip
    assert len(problems) == 1 and problems[0].startswith(
        f"{WHERE}.layers[1].conv1d: a language model predicts a token at every step and generates one at a time"
    )


# ------------------------------------------------------------------------------------- default models


def default_model(kind: str, path: str) -> ModelSpec:
    data = {"kind": kind, "path": path, **({"format": "wide"} if kind == "sequences" else {})}
    return PipelineSpec.model_validate({"name": "p", "task": "classify", "data": data}).model


@pytest.mark.parametrize("kind", ["sequences", "images", "audio"])
def test_values_over_time_default_to_lstm_fcn(kind: str, tmp_path: Any) -> None:
    model_spec = default_model(kind, str(tmp_path))
    assert model_spec == spec(*SEQUENCE_CLASSIFIER_LAYERS)
    model = build_model(model_spec, n_features=2, n_outputs=3)
    x, lengths = padded_batch([12, 5], f=2)
    assert model(x, lengths).shape == (2, 3)


def test_text_defaults_to_a_convolution_with_max_pooling(tmp_path: Any) -> None:
    model_spec = default_model("text", str(tmp_path / "texts.csv"))
    assert [layer.kind for layer in model_spec.layers] == [
        "embedding", "conv1d", "global_max_pool", "dropout", "dense"
    ]  # fmt: skip
    assert model_spec.layers[0].embedding.dropout > 0 and model_spec.layers[1].conv1d.kernel_size == 3


def test_the_default_sequence_classifier_trains_with_the_trainer(patterns: Patterns, tmp_path: Any) -> None:
    """LSTM-FCN through lstmflow's own training loop on three classes of variable-length sequences."""
    spec = patterns.spec(model={"layers": SEQUENCE_CLASSIFIER_LAYERS}, train={"epochs": 6})
    result = patterns.fit(spec, tmp_path / "run")
    assert result.best_val_loss < 0.5 * torch.log(torch.tensor(3.0)).item()  # well below guessing among 3 classes
