"""Metrics the seed papers report.

- ACC: accuracy on the clean test set.
- ASR: attack success rate, the share of triggered test images whose true class
  is not the target that the model assigns to the backdoor label.
- RA: robust accuracy, the share of those triggered images still classified as
  their true class.
- DER: defense effectiveness rating (Zhu et al., FT-SAM, ICCV 2023),
  DER = [max(0, ASR_before - ASR_after) - max(0, ACC_before - ACC_after) + 1] / 2,
  in [0, 1]; computed on fractions or percentages alike (give both in the same unit
  and pass ``scale=100`` for percentages).
"""
import torch


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size=512, device="cpu", bf16=False) -> torch.Tensor:
    """Class predictions for uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            preds.append(model(x).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device="cpu")


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item() * 100


def evaluate(model, test, attack=None, **kwargs) -> dict:
    """ACC, and ASR / RA when an attack is given, all in percent."""
    result = {"acc": accuracy(predict(model, test.images, **kwargs), test.labels)}
    if attack is not None:
        images, true, backdoor = attack.triggered_test_set(test)
        preds = predict(model, images, **kwargs)
        result["asr"] = accuracy(preds, backdoor)
        result["ra"] = accuracy(preds, true)
    return result


def defense_effectiveness_rating(asr_before, asr_after, acc_before, acc_after, scale=100.0) -> float:
    """DER in [0, 1]; ``scale`` is 100 when the inputs are percentages, 1 for fractions."""
    return (max(0.0, asr_before - asr_after) - max(0.0, acc_before - acc_after) + scale) / (2 * scale)
