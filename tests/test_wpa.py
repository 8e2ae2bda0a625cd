"""ViLT's word-patch alignment: the IPOT transport plan, the distance, and the loss on the ITM pass."""

import pytest
import torch

from kaleido.model import create_model
from kaleido.model.modeling import KaleidoBertOutput
from kaleido.pretrain.config import TaskConfig
from kaleido.pretrain.data import collate_pretrain
from kaleido.pretrain.task import PretrainTask
from kaleido.pretrain.wpa import WPAHead, ipot, wpa_distance

from test_pretrain import _dataset


def test_ipot_has_uniform_marginals_and_ignores_padding():
    torch.manual_seed(0)
    cost = torch.rand(2, 5, 7)
    x_pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    y_pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    plan = ipot(cost, x_pad, y_pad, iterations=200)
    assert (plan[1, 3:] == 0).all() and (plan[1, :, 4:] == 0).all()
    torch.testing.assert_close(plan[0].sum(1), torch.full((5,), 1 / 5), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan[0].sum(0), torch.full((7,), 1 / 7), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan[1, :3].sum(1), torch.full((3,), 1 / 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan[1, :, :4].sum(0), torch.full((4,), 1 / 4), atol=1e-4, rtol=0)


def test_ipot_finds_the_permutation_that_costs_nothing():
    perm = torch.tensor([2, 0, 3, 1])
    cost = torch.ones(1, 4, 4)
    cost[0, torch.arange(4), perm] = 0.0
    none = torch.zeros(1, 4, dtype=torch.bool)
    plan = ipot(cost, none, none, beta=0.5, iterations=50)
    assert (plan[0].argmax(1) == perm).all()
    assert (plan[0, torch.arange(4), perm] > 0.24).all()          # nearly all of each word's 1/4 mass
    assert float((cost * plan).sum()) < 0.02                      # the exact optimum is 0


def _output(text: torch.Tensor, patches: torch.Tensor) -> KaleidoBertOutput:
    hidden = torch.cat([text, patches], dim=1)
    keys = torch.ones(hidden.shape[:2], dtype=torch.bool)
    return KaleidoBertOutput(last_hidden_state=hidden, pooled=hidden[:, 0], text_length=text.shape[1], keys=keys)


def test_words_that_match_patches_are_closer_and_cls_sep_padding_do_not_count():
    torch.manual_seed(1)
    words = torch.randn(1, 3, 16)
    cls_sep = torch.randn(1, 2, 16) * 10
    text = torch.cat([cls_sep[:, :1], words, cls_sep[:, 1:], torch.randn(1, 2, 16)], dim=1)  # + 2 padding
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    aligned = _output(text, words[:, [2, 0, 1]])                   # each word has its patch
    unrelated = _output(text, torch.randn(1, 3, 16))
    d_aligned, d_unrelated = wpa_distance(aligned, mask), wpa_distance(unrelated, mask)
    assert float(d_aligned) < 0.02 < float(d_unrelated)
    # changing [CLS], [SEP] or the padding states changes nothing
    other = text.clone()
    other[:, [0, 4, 5, 6]] = torch.randn(1, 4, 16)
    torch.testing.assert_close(wpa_distance(_output(other, words[:, [2, 0, 1]]), mask), d_aligned)


def test_the_loss_pulls_true_pairs_together_and_pushes_negatives_apart():
    torch.manual_seed(2)
    text = torch.randn(2, 5, 8, requires_grad=True)
    patches = torch.randn(2, 4, 8)
    mask = torch.ones(2, 5, dtype=torch.long)
    out = WPAHead()(_output(text, patches), {"itm_labels": torch.tensor([1, 0]), "attention_mask": mask})
    d = wpa_distance(_output(text, patches), mask)
    torch.testing.assert_close(out["wpa_loss"], (d[0] - d[1]) / 2)
    out["wpa_loss"].backward()
    step = text - 0.5 * text.grad                                  # one gradient step on the states
    d2 = wpa_distance(_output(step, patches), mask)
    assert d2[0] < d[0] and d2[1] > d[1]


def test_wpa_trains_the_encoder_on_the_clean_itm_pass(pretrain_data):
    tasks = TaskConfig(itc=1.0, itm_clean=True, wpa=0.1)
    data = _dataset(pretrain_data, tasks=tasks)
    batch = collate_pretrain([data[i] for i in range(8)])
    torch.manual_seed(0)
    task = PretrainTask(create_model("tiny"), tasks)
    out = task(batch)
    assert torch.isfinite(out["wpa_loss"]) and "wpa_gap" in out
    expected = sum(w * out[f"{n}_loss"] for n, w in tasks.weights().items())
    torch.testing.assert_close(out["loss"], expected)
    out["wpa_loss"].backward()
    layer = task.model.encoder.layer[-1].output.dense.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs tasks.itm"):
        TaskConfig(itm=0.0, wpa=0.1)


def test_wpa_on_the_legacy_itm_pass(pretrain_data):
    tasks = TaskConfig(wpa=0.1)   # ITM on the masked, corrupted sample, negatives from the dataset
    data = _dataset(pretrain_data, tasks=tasks)
    batch = collate_pretrain([data[i] for i in range(8)])
    torch.manual_seed(0)
    out = PretrainTask(create_model("tiny"), tasks)(batch)
    assert torch.isfinite(out["wpa_loss"]) and batch["itm_labels"].unique().numel() == 2
