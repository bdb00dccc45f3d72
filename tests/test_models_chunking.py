"""Chunked backbone passes with activation checkpointing: same results, bounded activations."""

import torch

from seqvision.config import ModelConfig
from seqvision.models.sequence_model import build_sequence_model


def _pair():
    torch.manual_seed(0)
    plain = build_sequence_model(ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8), 3)
    chunked = build_sequence_model(ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8, chunk_size=3, checkpointing=True), 3)
    chunked.load_state_dict(plain.state_dict())
    return plain, chunked


def test_chunked_checkpointed_gradients_equal_the_unchunked_ones():
    plain, chunked = _pair()
    lengths = torch.tensor([4, 7])
    images = torch.randn(11, 3, 16, 16)
    for model in (plain, chunked):
        model.eval()  # BatchNorm on running statistics: chunking cannot change a thing
        model(images, lengths).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), chunked.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_checkpoint_replay_does_not_update_batchnorm_twice():
    plain, chunked = _pair()
    chunked.encoder.chunk_size = 1  # two one-image chunks, each replayed in backward ...
    images = torch.randn(2, 3, 16, 16)
    for model in (plain, chunked):
        model.train()
    chunked(images, torch.tensor([2])).sum().backward()
    for image in images:  # ... must update BatchNorm exactly like two single-image passes, once each
        plain.encoder(image[None])
    for (name, a), (_, b) in zip(plain.encoder.named_buffers(), chunked.encoder.named_buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_inference_chunks_without_checkpointing():
    plain, chunked = _pair()
    plain.eval(), chunked.eval()
    with torch.no_grad():
        images = torch.randn(8, 3, 16, 16)
        assert torch.allclose(plain(images, torch.tensor([8])), chunked(images, torch.tensor([8])), atol=1e-5)
