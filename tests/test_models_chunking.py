"""Chunked backbone passes with activation checkpointing: same results, bounded activations."""

import torch

from seqvision.models.sequence_model import build_sequence_model


def _pair():
    torch.manual_seed(0)
    plain = build_sequence_model(3, backbone="tiny_cnn", weights="none", hidden_size=8)
    chunked = build_sequence_model(3, backbone="tiny_cnn", weights="none", hidden_size=8, chunk_size=3, checkpointing=True)
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


def _trunk_calls_and_saved_bytes(encoder, images):
    """(trunk forward calls in forward + backward, bytes held for the backward pass outside checkpoints)."""
    calls, saved = [0], [0]
    encode = encoder._encode  # (a trunk forward hook does not see checkpoint's replay: count one level up)

    def counted(x, layout=None):  # layout: a temporal shift's, None here
        calls[0] += 1
        return encode(x, layout)

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    encoder._encode = counted
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = encoder(images)
        out.sum().backward()
    finally:
        del encoder._encode
    return calls[0], saved[0]


def test_checkpointing_recomputes_chunks_and_holds_only_their_inputs():
    plain, chunked = _pair()
    images = torch.randn(12, 3, 16, 16)
    plain.train(), chunked.train()
    plain_calls, plain_saved = _trunk_calls_and_saved_bytes(plain.encoder, images)
    chunk_calls, chunk_saved = _trunk_calls_and_saved_bytes(chunked.encoder, images)
    assert plain_calls == 1
    assert chunk_calls == 2 * 4  # 4 chunks of 3 images: each run forward, then again in backward
    # without checkpointing every activation is kept for backward; with it, about the chunks' inputs
    assert chunk_saved <= 2 * images.numel() * images.element_size() < plain_saved / 2
    chunked.encoder.checkpointing = False  # chunked alone (no checkpointing) keeps every activation
    _, unchecked_saved = _trunk_calls_and_saved_bytes(chunked.encoder, images)
    assert unchecked_saved > 2 * chunk_saved
