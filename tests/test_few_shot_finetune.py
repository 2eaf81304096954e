"""Few-shot fine-tuning (`examples/finetune.py` few-shot recipe, `mage_hf.training.lp_ft`) and the fixed-test
protocol of `examples/few_shot.py --protocol draws`, on a tiny MAGE and the Fashion-MNIST subset in tests/data."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from mage_hf import MageConfig, MageForImageClassification, MageForMaskedImageModeling
from mage_hf.training.data import SAMPLE_INDEX_COLUMN, load_image_data
from mage_hf.training.few_shot import few_shot_indices, few_shot_subset, load_few_shot_data
from mage_hf.training.lp_ft import (
    FEW_SHOT_RECIPE,
    fit_logistic_regression,
    interpolate_weights,
    pooled_features,
    warm_start_classifier,
    weights_snapshot,
)
from mage_hf.training.transforms import MageImageTransform

from conftest import EXAMPLES_DIR, free_port, run_example, tiny_config_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")

CHANCE_LOSS = math.log(10)  # 10 classes


@pytest.fixture(scope="module")
def tiny_mage_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mage")
    MageForMaskedImageModeling(MageConfig(**tiny_config_kwargs())).save_pretrained(path)
    return path


def argv(**args) -> list[str]:
    out = []
    for key, value in args.items():
        out += [f"--{key}"] + ([str(v) for v in value] if isinstance(value, list) else [str(value)])
    return out


def load_example(monkeypatch, name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_warm_start_makes_the_classifier_the_fitted_probe(tiny_mage_dir):
    torch.manual_seed(0)
    model = MageForImageClassification.from_pretrained(tiny_mage_dir, num_labels=3, class_conditional=False)
    pixels, labels = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
    features = pooled_features(model, pixels)
    standardised = (features - features.mean(0)) / features.std(0)
    weight, bias = fit_logistic_regression(standardised, labels, 3)
    accuracy = warm_start_classifier(model, pixels, labels)
    with torch.no_grad():
        logits = model.eval()(pixel_values=pixels).logits
    # The head now reads standardised features (folded into fc_norm) and holds the probe's weights.
    assert torch.allclose(logits, standardised @ weight.t() + bias, atol=1e-4)
    assert accuracy == float((logits.argmax(1) == labels).float().mean())
    with pytest.raises(ValueError, match="labels"):
        warm_start_classifier(model, pixels, labels[:5])


@pytest.mark.parametrize("pooling", ["cls", "tokens"])
def test_warm_start_of_a_final_norm_head_is_the_fitted_probe(tiny_mage_dir, pooling):
    model = MageForImageClassification.from_pretrained(tiny_mage_dir, num_labels=3, classifier_pooling=pooling)
    pixels, labels = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
    with torch.no_grad():
        hidden = model.mage(pixel_values=pixels).last_hidden_state
    features = hidden[:, 0] if pooling == "cls" else hidden[:, 1:].flatten(1)
    norm_before = model.mage.norm.weight.clone()
    assert torch.allclose(pooled_features(model, pixels), features)
    standardised = (features - features.mean(0)) / features.std(0)
    weight, bias = fit_logistic_regression(standardised, labels, 3)
    warm_start_classifier(model, pixels, labels)
    with torch.no_grad():
        logits = model.eval()(pixel_values=pixels).logits
    # The class-token head gets the standardisation folded into the final `norm`; the token head into itself, as
    # that norm serves every token position.
    assert torch.equal(model.mage.norm.weight, norm_before) == (pooling == "tokens")
    assert torch.allclose(logits, standardised @ weight.t() + bias, atol=1e-4)


def test_interpolate_weights_mixes_every_weight(tiny_mage_dir):
    model = MageForImageClassification.from_pretrained(tiny_mage_dir, num_labels=3)
    anchor = weights_snapshot(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    tuned = weights_snapshot(model)
    interpolate_weights(model, anchor, 0.25)
    state = model.state_dict()
    for name, value in anchor.items():
        assert torch.allclose(state[name], 0.75 * value + 0.25 * tuned[name], atol=1e-6), name
    interpolate_weights(model, anchor, 0.0)
    assert all(torch.equal(model.state_dict()[name], value) for name, value in anchor.items())
    with pytest.raises(ValueError, match="alpha"):
        interpolate_weights(model, anchor, 1.5)
    with pytest.raises(ValueError, match="anchor"):
        interpolate_weights(model, {}, 0.5)


def test_logistic_regression_is_scikit_learn_objective():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 5, generator=generator)
    labels = (features[:, 0] > 0).long() + (features[:, 1] > 0).long()
    weight, bias = fit_logistic_regression(features, labels, 3, inverse_regularization=1.0)
    weight, bias = weight.double().requires_grad_(), bias.double().requires_grad_()
    loss = torch.nn.functional.cross_entropy(features.double() @ weight.t() + bias, labels, reduction="sum")
    (loss + 0.5 * weight.pow(2).sum()).backward()
    assert weight.grad.abs().max() < 1e-3 and bias.grad.abs().max() < 1e-3  # a stationary point
    with pytest.raises(ValueError, match="inverse_regularization"):
        fit_logistic_regression(features, labels, 3, inverse_regularization=0.0)


def test_fast_support_load_matches_the_whole_split(fashion_mnist_path):
    whole = load_image_data(str(fashion_mnist_path), "train")
    expected = few_shot_subset(whole.dataset, whole.label_column, 3, seed=5)
    fast = load_few_shot_data(str(fashion_mnist_path), "train", 3, seed=5)
    assert fast.class_names == whole.class_names
    assert fast.dataset[SAMPLE_INDEX_COLUMN] == expected[SAMPLE_INDEX_COLUMN]
    assert fast.dataset[fast.label_column] == expected[whole.label_column]
    assert np.array_equal(np.asarray(fast.dataset[3]["image"]), np.asarray(expected[3]["image"]))
    labels = np.asarray(whole.dataset[whole.label_column])
    assert np.array_equal(few_shot_indices(labels, 3, 5), np.asarray(expected[SAMPLE_INDEX_COLUMN]))
    assert np.bincount(labels[few_shot_indices(labels, 3, 5)]).tolist() == [3] * 10


def test_recipe_is_chosen_by_shots_and_explicit_flags_win(monkeypatch, tmp_path, tiny_mage_dir, fashion_mnist_path):
    finetune = load_example(monkeypatch, "finetune")
    base = argv(model_name_or_path=tiny_mage_dir, train_data=fashion_mnist_path, output_dir=tmp_path)
    model_args, data_args, training_args = finetune.parse_arguments(base + ["--max_train_samples_per_class", "5"])
    assert model_args.recipe == "few_shot" and model_args.linear_probe_warm_start
    assert model_args.classifier_pooling == "tokens" and model_args.wise_ft_alpha == FEW_SHOT_RECIPE["wise_ft_alpha"] < 1
    assert model_args.mixup == model_args.cutmix == 0 and not data_args.random_crop
    assert training_args.learning_rate == FEW_SHOT_RECIPE["learning_rate"]
    model_args, _, training_args = finetune.parse_arguments(
        base + ["--max_train_samples_per_class", "5", "--learning_rate", "0.02", "--mixup", "0.5"])
    assert training_args.learning_rate == 0.02 and model_args.mixup == 0.5 and model_args.cutmix == 0
    for extra in ([], ["--max_train_samples_per_class", "500"], ["--max_train_samples_per_class", "5", "--recipe", "full"]):
        model_args, data_args, _ = finetune.parse_arguments(base + extra)
        assert model_args.recipe == "full" and model_args.mixup == 0.8 and data_args.random_crop
        assert model_args.classifier_pooling == "mean" and model_args.wise_ft_alpha == 1.0
    with pytest.raises(ValueError, match="recipe"):
        finetune.parse_arguments(base + ["--recipe", "tiny"])
    with pytest.raises(ValueError, match="wise_ft_alpha"):
        finetune.parse_arguments(base + ["--wise_ft_alpha", "2"])
    with pytest.raises(ValueError, match="classifier_pooling"):
        finetune.parse_arguments(base + ["--classifier_pooling", "max"])


def test_wise_ft_alpha_zero_saves_the_warm_start(monkeypatch, tmp_path, tiny_mage_dir, fashion_mnist_path):
    """alpha 0 keeps none of the fine-tuning: the saved classifier is the warm start, weight for weight."""
    output = tmp_path / "out"
    run_example(monkeypatch, "finetune", *argv(
        model_name_or_path=tiny_mage_dir, train_data=fashion_mnist_path, output_dir=output, eval_split="",
        max_train_samples_per_class=3, num_train_epochs=3, learning_rate=1e-2, wise_ft_alpha=0.0,
        disable_tqdm="true", report_to="none"))
    saved = MageForImageClassification.from_pretrained(output)
    finetune = load_example(monkeypatch, "finetune")
    model_args, data_args, training_args = finetune.parse_arguments(argv(
        model_name_or_path=tiny_mage_dir, train_data=fashion_mnist_path, output_dir=tmp_path / "unused",
        max_train_samples_per_class=3))
    train, _ = finetune.load_splits(data_args, training_args)
    expected = finetune.load_classifier(model_args, train.class_names)
    transform = MageImageTransform(data_args.transform_config(expected.config.image_size, False, training_args.seed))
    warm_start_classifier(expected, *finetune.support_pixels(train, transform))
    for name, value in expected.state_dict().items():
        assert torch.allclose(saved.state_dict()[name], value, atol=1e-6), name


def test_few_shot_recipe_learns_and_saves_a_pipeline_folder(monkeypatch, tmp_path, tiny_mage_dir, fashion_mnist_path):
    output = tmp_path / "out"
    metrics = run_example(monkeypatch, "finetune", *argv(
        model_name_or_path=tiny_mage_dir, train_data=fashion_mnist_path, output_dir=output,
        max_train_samples_per_class=8, max_eval_samples=100, logging_steps=1, disable_tqdm="true", report_to="none"))
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 30 * 2  # 80 images in batches of 50, 30 epochs
    # The full-data recipe stays at chance on 80 images. The few-shot one starts from a head that already fits the
    # support images (a linear map of 64 tokens x 32 dims separates 80 images even for a random tiny MAGE) and
    # fine-tuning keeps the loss falling from there.
    assert losses[0] < 0.1 * CHANCE_LOSS and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert MageForImageClassification.from_pretrained(output).config.classifier_pooling == "tokens"
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0

    classifier = pipeline("image-classification", model=str(output))
    image = np.load(fashion_mnist_path)["x_test"][0]
    predictions = classifier(Image.fromarray(image))
    names = set(MageForImageClassification.from_pretrained(output).config.id2label.values())
    assert len(predictions) == 5 and {p["label"] for p in predictions} <= names and "Sneaker" in names


def test_draws_protocol_scores_every_route_on_the_same_draws(monkeypatch, tmp_path, tiny_mage_dir, fashion_mnist_path):
    results = run_example(monkeypatch, "few_shot", *argv(
        protocol="draws", model_name_or_path=tiny_mage_dir, data=fashion_mnist_path, k_shot=[1, 2], seeds=[0, 1],
        max_samples=60, output_dir=tmp_path / "runs", output_file=tmp_path / "table.json",
        finetune_args="--num_train_epochs 2 --per_device_eval_batch_size 64"))
    assert set(results["scores"]) == {"raw", "frozen", "frozen_cls", "frozen_tokens", "finetune"}
    for scores in results["scores"].values():
        assert set(scores) == {"1", "2"} and all(len(values) == 2 for values in scores.values())
    assert results["table"].splitlines()[0].startswith("| K (10-way, 60 test images)")
    assert len(results["table"].splitlines()) == 4
    saved = MageForImageClassification.from_pretrained(tmp_path / "runs" / "k2-seed1")
    assert saved.config.id2label[7] == "Sneaker"
    assert json.loads((tmp_path / "table.json").read_text())["results"]["support_indices"]["k2-seed1"] == \
        few_shot_indices(np.load(fashion_mnist_path)["y_train"], 2, 1).tolist()


@pytest.mark.slow
def test_few_shot_recipe_under_two_process_accelerate_launch(tmp_path, tiny_mage_dir, fashion_mnist_path):
    output = tmp_path / "ddp"
    command = [
        shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate", "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--main_process_port", str(free_port()),
        "--mixed_precision", "no", "--dynamo_backend", "no", str(EXAMPLES_DIR / "finetune.py"),
        *argv(model_name_or_path=tiny_mage_dir, train_data=fashion_mnist_path, output_dir=output,
              max_train_samples_per_class=5, max_eval_samples=64, num_train_epochs=4, report_to="none"),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # 50 images shared by 2 processes: one step per epoch
    predictions = pipeline("image-classification", model=str(output))(Image.new("L", (28, 28)))
    assert len(predictions) == 5
