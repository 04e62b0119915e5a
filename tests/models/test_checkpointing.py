"""--use_checkpoint: the encoder layers, the BatchFormer and the decoder layers are recomputed in the
backward pass; losses and gradients equal those of the stored pass (dropout on: the recomputation
replays the RNG state), and far fewer activations are kept."""
import pytest
import torch

from models import build_model
from util.args import get_args_parser

pytestmark = pytest.mark.usefixtures("one_thread")

# Dropout stays at its default (0.1, and 0.5 in the BatchFormer): equality needs the replayed masks.
SMALL = (
    "--no_pretrained_backbone --backbone resnet18 --hidden_dim 32 --dim_feedforward 64 "
    "--enc_layers 2 --dec_layers 2 --num_queries 6 --nheads 4"
    " --enc_n_points 2 --dec_n_points 2 --dataset_file toy"
).split()
CONFIGS = {
    "base": [],
    "bf": ["--bf", "1"],
    "refine_two_stage": ["--with_box_refine", "--two_stage"],
}


def _build(*flags):
    torch.manual_seed(0)
    return build_model(get_args_parser().parse_args([*SMALL, *flags]))


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, 48, 64, generator=g), torch.randn(3, 40, 56, generator=g)]


def _targets():
    return [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
    ]


def _step(model, criterion):
    """Losses and every parameter's gradient of one training step, from a fixed RNG state."""
    model.train()
    model.zero_grad()
    torch.manual_seed(123)
    losses = criterion(model(_images()), _targets())
    total = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _saved_bytes(model, monkeypatch) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of the transformer in one
    training forward (the backbone's, unaffected and dominant at this size, are left out)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    transformer_forward = model.transformer.forward_features

    def recorded(*args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return transformer_forward(*args, **kwargs)

    monkeypatch.setattr(model.transformer, "forward_features", recorded)
    model.train()
    model(_images())
    return sum(seen.values())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_losses_and_gradients_with_and_without_checkpointing(name):
    model, criterion, _ = _build(*CONFIGS[name])
    ckpt_model, ckpt_criterion, _ = _build(*CONFIGS[name], "--use_checkpoint")
    ckpt_model.load_state_dict(model.state_dict())
    assert ckpt_model.transformer.encoder.use_checkpoint and ckpt_model.transformer.decoder.use_checkpoint
    assert not model.transformer.encoder.use_checkpoint

    losses, grads = _step(model, criterion)
    ckpt_losses, ckpt_grads = _step(ckpt_model, ckpt_criterion)
    assert losses.keys() == ckpt_losses.keys()
    for k in losses:
        torch.testing.assert_close(ckpt_losses[k], losses[k], rtol=1e-6, atol=1e-7, msg=k)
    assert grads.keys() == ckpt_grads.keys()
    assert len(grads) > 50
    for n in grads:
        torch.testing.assert_close(ckpt_grads[n], grads[n], rtol=1e-5, atol=1e-7, msg=n)
    if "--bf" in CONFIGS[name]:
        assert any(ckpt_grads[n].abs().sum() > 0 for n in ckpt_grads if ".bf." in n)


def test_dropout_is_on_so_the_rng_replay_matters():
    """Two steps from different RNG states differ: the equality above is not that of a deterministic net."""
    model, criterion, _ = _build("--bf", "1")
    losses, _ = _step(model, criterion)
    model.train()
    torch.manual_seed(7)
    other = criterion(model(_images()), _targets())
    assert not torch.allclose(other["loss_ce"].detach(), losses["loss_ce"])


@pytest.mark.parametrize("name", ["base", "bf"])
def test_checkpointing_keeps_fewer_activations(name, monkeypatch):
    model, _, _ = _build(*CONFIGS[name])
    ckpt_model, _, _ = _build(*CONFIGS[name], "--use_checkpoint")
    stored, recomputed = _saved_bytes(model, monkeypatch), _saved_bytes(ckpt_model, monkeypatch)
    assert recomputed < 0.5 * stored, (recomputed, stored)


def test_no_checkpointing_without_autograd():
    """Evaluation records nothing, so nothing is wrapped: the outputs are those of the plain model."""
    model, _, _ = _build("--use_checkpoint")
    plain, _, _ = _build()
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    with torch.no_grad():
        a, b = model(_images()), plain(_images())
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_a_batchformer_across_ranks_is_not_recomputed(monkeypatch):
    """--bf_scope global: recomputing the layer would gather every rank's images again in the backward
    pass; that layer keeps its activations (the others are still recomputed). A simulated second rank
    holds the same images."""
    import models.batchformer as bfm

    gathers = []

    def gather(x):
        gathers.append(torch.is_grad_enabled())
        return torch.cat([x, x])

    monkeypatch.setattr(bfm, "get_world_size", lambda: 2)
    monkeypatch.setattr(bfm, "all_gather_rows", gather)
    monkeypatch.setattr(bfm, "max_over_ranks", lambda sizes: sizes)
    model, criterion, _ = _build("--bf", "1", "--bf_scope", "global", "--use_checkpoint")
    model.train()
    losses = criterion(model(_images()), _targets())
    sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()
    assert len(gathers) == 1  # in the forward pass only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer.bf.parameters())
