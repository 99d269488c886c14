"""Penultimate features, the t-SNE sample, t-SNE itself, the poison-separation score and the figure."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from purilib.attacks import BadNets
from purilib.data import create_dataset
from purilib.devices import strict_devices
from purilib.features import (POISONED, feature_panels, feature_sample, penultimate_features, plot_tsne,
                              poison_separation, separation_chance, tsne)
from purilib.layers import classifier_of
from purilib.models import create_model

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def test_set():
    return create_dataset("synthetic", "test", num_test=200)


@pytest.mark.parametrize("name", ["preact_resnet18", "resnet18"])
def test_features_are_the_classifiers_input(name, test_set):
    torch.manual_seed(0)
    model = create_model(name, width=0.125)
    with strict_devices():  # a tensor made without naming a device would fail here
        features = penultimate_features(model, test_set.images[:20], batch_size=8)
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert features.shape == (20, classifier_of(model).in_features)
    model.eval()
    with torch.no_grad():  # the classifier applied to them gives the model's logits
        logits = model(test_set.images[:20].float() / 255)
    assert torch.allclose(classifier_of(model)(features), logits, atol=1e-4)


def test_preact_features_are_the_average_pool_in_eval_mode(test_set):
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=0.125)
    model.train()  # features must come from eval mode (running BN statistics), and training mode come back
    features = penultimate_features(model, test_set.images[:20], batch_size=7)
    assert model.training
    model.eval()
    with torch.no_grad():
        x = test_set.images[:20].float() / 255
        out = model.layer4(model.layer3(model.layer2(model.layer1(model.conv1(model.normalize(x))))))
        manual = out.mean((2, 3))
    assert torch.allclose(features, manual, atol=1e-5)
    assert penultimate_features(model, test_set.images[:0]).shape == (0, manual.shape[1])


def test_sample_is_class_balanced_plus_triggered_non_target_images(test_set):
    attack = BadNets(target=0)
    sample = feature_sample(test_set, attack, per_class=5, poisoned=30, seed=1)
    assert len(sample) == 80 and sample.images.dtype == torch.uint8
    clean, poisoned = ~sample.poisoned, sample.poisoned
    assert torch.bincount(sample.labels[clean], minlength=10).tolist() == [5] * 10
    assert int(poisoned.sum()) == 30 and (sample.labels[poisoned] != 0).all()  # no target-class image triggered
    assert (sample.groups[poisoned.numpy()] == POISONED).all()
    assert set(sample.groups[clean.numpy()]) == {f"class {k}" for k in range(10)}
    assert (sample.images[poisoned][:, :, -3:, -3:] == attack.apply_trigger(sample.images[poisoned])[:, :, -3:, -3:]).all()
    again = feature_sample(test_set, attack, per_class=5, poisoned=30, seed=1)
    assert torch.equal(sample.images, again.images)
    with pytest.raises(ValueError, match="eligible"):
        feature_sample(test_set, attack, per_class=5, poisoned=1000, seed=1)


def test_tsne_is_finite_2d_and_deterministic_for_a_seed():
    features = torch.randn(120, 16, generator=torch.Generator().manual_seed(0))
    a, b = tsne(features, seed=3, perplexity=20), tsne(features, seed=3, perplexity=20)
    assert a.shape == (120, 2) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="perplexity"):
        tsne(features[:10], perplexity=30)


def _clusters(mixed: bool):
    """10 class clusters of 30 points in 16-D and 100 poisoned points: a tight cluster of their own, or
    spread among the class clusters (10 in each) like any other member of them."""
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(11, 16, generator=g)
    clean_class = torch.arange(10).repeat_interleave(30)
    poisoned_at = torch.arange(10).repeat_interleave(10) if mixed else torch.full((100,), 10)
    features = centres[torch.cat([clean_class, poisoned_at])] + torch.randn(400, 16, generator=g)
    groups = np.array([f"class {k}" for k in clean_class.tolist()] + [POISONED] * 100)
    return features, groups


def test_poison_separation_is_one_for_a_separate_cluster_and_chance_when_mixed():
    separate, groups = _clusters(mixed=False)
    mixed, _ = _clusters(mixed=True)
    assert poison_separation(separate, groups, k=10) == 1.0
    chance = separation_chance(groups, k=10)  # q = 99/399: P[Bin(10, q) >= 6] ~ 0.02
    assert 0.01 < chance < 0.03
    assert poison_separation(mixed, groups, k=10) < chance + 0.05
    # half the points poisoned, all drawn from one distribution: chance is high, and the score must be near it
    # (a point counted as its own neighbour, or ties of 5 of 10 counted as "mostly", would give ~0.5 or ~0.6)
    noise = torch.randn(400, 8, generator=torch.Generator().manual_seed(1))
    halves = np.array(["class 0"] * 200 + [POISONED] * 200)
    assert abs(poison_separation(noise, halves, k=10) - separation_chance(halves, k=10)) < 0.1
    # the point itself is not its own neighbour: with k = 1, a lone poisoned point among clean ones is not separated
    lone = np.array(["class 0"] * 5 + [POISONED])
    assert poison_separation(torch.arange(6.0)[:, None], lone, k=1) == 0.0


def test_panels_and_figure():
    torch.manual_seed(0)
    data = create_dataset("synthetic", "test", num_test=200)
    sample = feature_sample(data, BadNets(target=0), per_class=6, poisoned=20, seed=0)
    models = {"before": create_model("preact_resnet18", width=0.125), "after": create_model("resnet18", width=0.125)}
    panels, scores = feature_panels(models, sample, perplexity=10)
    assert list(panels) == ["before", "after"] and set(scores) == {"before", "after"}
    assert all(0 <= s <= 1 for s in scores.values())
    fig = plot_tsne(panels, "synthetic", scores)
    assert len(fig.axes) == 2
    labels = fig.legends[0].get_texts()
    assert [t.get_text() for t in labels] == [f"class {k}" for k in range(10)] + [POISONED]
    plt.close(fig)


def test_a_cells_record_redraws_its_panel(test_set):
    """features.measure keeps the embedding, the groups and the score; panels_from_records reads them back."""
    import pandas as pd

    from purilib.features import measure, panels_from_records
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=0.125)
    attack = BadNets(size=8)
    cell = measure(model, test_set, attack, per_class=5, poisoned=20, perplexity=5.0, seed=0)
    assert len(cell["tsne"]) == len(cell["tsne_groups"]) == 70 and cell["tsne_groups"].count(POISONED) == 20
    assert 0 <= cell["poison_separation"] <= 1 and 0 <= cell["separation_chance"] <= 1
    again = measure(model, test_set, attack, per_class=5, poisoned=20, perplexity=5.0, seed=0)
    assert again == cell  # the same sample and embedding for every cell of a row
    records = pd.DataFrame([{"defense": "No defense", "seed": 0, **cell}, {"defense": "FIP", "seed": 0, **cell}])
    panels, scores = panels_from_records(records)
    assert list(panels) == ["No defense", "FIP"] and panels["FIP"][0].shape == (70, 2)
    assert scores["FIP"] == cell["poison_separation"]
