import pytest
import torch
from PIL import Image
from torch import nn

from sat_captioner.model import (END_ID, SATConfig, SATDecoder, SATOutput,
                                 doubly_stochastic_loss, encode, sat_losses)

V, C, GRID = 13, 8, (2, 3)
L = GRID[0] * GRID[1]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny decoders run many small ops: a second intra-op thread only adds sync overhead,
    # and on a busy 2-core machine it makes them 20x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _decoder(seed: int = 0, dropout: float = 0.0) -> SATDecoder:
    torch.manual_seed(seed)
    cfg = SATConfig(embed_dim=16, hidden_dim=32, attention_dim=16, dropout=dropout, max_len=7)
    return SATDecoder(cfg, V, C)


def _batch():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(4, L, C, generator=g)
    captions = torch.tensor([[1, 5, 6, 7, 2, 0],
                             [1, 8, 2, 0, 0, 0],
                             [1, 4, 9, 10, 11, 2],
                             [1, 12, 5, 2, 0, 0]])
    return features, captions


def test_forward_shapes_and_backward_through_every_parameter():
    decoder = _decoder(dropout=0.3)
    features, captions = _batch()
    out = decoder(features, captions)
    assert out.logits.shape == (4, 5, V) and out.alphas.shape == (4, 5, L)
    assert out.mask.tolist()[1] == [True, True, False, False, False]
    assert torch.allclose(out.alphas.sum(-1), torch.ones(4, 5), atol=1e-6)
    losses = sat_losses(out, captions[:, 1:], alpha_c=1.0)
    assert set(losses) == {"caption_loss", "attention_loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_training_steps_on_a_fixed_batch_reduce_the_loss():
    decoder = _decoder()
    features, captions = _batch()
    opt = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        losses = sat_losses(decoder(features, captions), captions[:, 1:], alpha_c=1.0)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(losses["caption_loss"].item())
    assert history[-1] < 0.2 * history[0]


def test_doubly_stochastic_loss_is_zero_iff_each_location_gets_total_attention_one():
    # T == L steps, each attending one distinct location: every location sums to 1 over time.
    perm = torch.eye(L)[torch.randperm(L, generator=torch.Generator().manual_seed(0))]
    alphas = perm.unsqueeze(0).repeat(2, 1, 1)  # (B, T=L, L)
    assert doubly_stochastic_loss(alphas).item() == pytest.approx(0.0, abs=1e-12)
    # a padded extra step does not count when masked
    padded = torch.cat([alphas, torch.full((2, 1, L), 1.0 / L)], dim=1)
    mask = torch.ones(2, L + 1, dtype=torch.bool)
    mask[:, -1] = False
    assert doubly_stochastic_loss(padded, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert doubly_stochastic_loss(padded).item() > 0
    # all steps on one location: the others get nothing
    focused = torch.zeros(2, L, L)
    focused[:, :, 0] = 1.0
    assert doubly_stochastic_loss(focused).item() > 0
    out = SATOutput(torch.zeros(2, L, V), focused, torch.ones(2, L, dtype=torch.bool))
    losses = sat_losses(out, torch.full((2, L), 4), alpha_c=0.5)
    assert losses["attention_loss"].item() == pytest.approx(0.5 * doubly_stochastic_loss(focused).item())


def _assert_generation(gen, grid=GRID):
    T = len(gen.token_ids)
    assert gen.attention.shape == (T, *grid)
    assert torch.allclose(gen.attention.sum(dim=(1, 2)), torch.ones(T), atol=1e-5)
    assert END_ID not in gen.token_ids


def test_greedy_and_beam_search_return_normalised_attention_per_word():
    decoder = _decoder(seed=3).eval()
    with torch.no_grad():
        decoder.out.bias[END_ID] -= 3.0  # a random decoder would otherwise stop at once
    features, _ = _batch()
    greedy = decoder.greedy(features, GRID)
    beam1 = decoder.beam_search(features, beam_size=1, grid=GRID)
    beam3 = decoder.beam_search(features, beam_size=3, grid=GRID)
    assert any(len(g.token_ids) > 1 for g in greedy)
    for g, b1, b3 in zip(greedy, beam1, beam3):
        for gen in (g, b1, b3):
            _assert_generation(gen)
        assert b1.token_ids == g.token_ids
        assert b1.score == pytest.approx(g.score, abs=1e-5)
        assert torch.allclose(b1.attention, g.attention, atol=1e-6)
        assert b3.score >= g.score - 1e-5  # on these inputs the wider beam finds no worse caption


def test_decoding_stops_at_end_or_max_len():
    decoder = _decoder().eval()
    features, _ = _batch()
    with torch.no_grad():
        decoder.out.bias[END_ID] += 100.0
    for gen in decoder.greedy(features, GRID) + decoder.beam_search(features, 2, GRID):
        assert gen.token_ids == [] and gen.attention.shape == (0, *GRID)
    with torch.no_grad():
        decoder.out.bias[END_ID] -= 300.0
    for gen in decoder.greedy(features, GRID, max_len=5) + decoder.beam_search(features, 2, GRID, 5):
        assert len(gen.token_ids) == 5
        _assert_generation(gen)


class _PoolBackbone(nn.Module):
    """Stand-in backbone: 8 x 8 average pooling, 3 channels, stride 8."""

    feature_dim, stride, name = 3, 8, "pool"

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def normalize(self, x):
        return x * 2 - 1

    def forward_map(self, x):
        return nn.functional.avg_pool2d(x, 8) * self.scale


def test_encode_returns_grid_features_and_crops_boxes():
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(40, 60, 3, generator=g) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    backbone = _PoolBackbone()
    feats = encode(backbone, [image, image.convert("L")], size=32)
    assert feats.shape == (2, 16, 3) and feats.dtype == torch.float32
    box = (10, 5, 50, 35)
    cropped = encode(backbone, [image, image], size=32, boxes=[box, None])
    assert torch.allclose(cropped[0], encode(backbone, [image.crop(box)], size=32)[0], atol=1e-6)
    assert torch.allclose(cropped[1], feats[0])
    with pytest.raises(ValueError, match="image 0"):
        encode(backbone, [image], size=32, boxes=[(70, 0, 80, 10)])
