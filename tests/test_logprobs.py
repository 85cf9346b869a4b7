"""The chunked LM-head log-probs, their entropy and their gradients, against torch autograd."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from socialr1_jax.model.logprobs import head_logprobs


@pytest.mark.parametrize("remat", [True, False])
@pytest.mark.parametrize("chunk", [3, 7])  # 7 does not divide T = 10: padded last chunk
def test_head_logprobs_values_and_gradients_match_torch(remat, chunk):
    rng = np.random.default_rng(0)
    b, t, d, v, temp = 3, 10, 16, 50, 0.7
    h = rng.standard_normal((b, t, d)).astype(np.float32)
    w = rng.standard_normal((v, d)).astype(np.float32) * 0.5
    y = rng.integers(0, v, (b, t)).astype(np.int32)
    g = rng.standard_normal((b, t)).astype(np.float32)  # cotangent of logp

    def f(h_, w_):
        logp, ent = head_logprobs(h_, w_, jnp.asarray(y), temperature=temp, chunk=chunk,
                                  with_entropy=True, remat=remat)
        return jnp.sum(logp * g), (logp, ent)

    (_, (logp, ent)), (dh, dw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        jnp.asarray(h), jnp.asarray(w))

    th = torch.tensor(h, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    lsm = torch.log_softmax(th @ tw.T / temp, -1)
    want = lsm.gather(-1, torch.tensor(y).long()[..., None])[..., 0]
    (want * torch.tensor(g, dtype=torch.float64)).sum().backward()
    want_ent = -(lsm.exp() * lsm).sum(-1)

    np.testing.assert_allclose(np.asarray(logp), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), want_ent.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(th.grad.numpy()).max() > 0.5 and np.abs(tw.grad.numpy()).max() > 0.5
    np.testing.assert_allclose(np.asarray(dh), th.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), tw.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_entropy_carries_no_gradient():
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.standard_normal((2, 4, 8)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((20, 8)).astype(np.float32))
    y = jnp.zeros((2, 4), jnp.int32)
    dh = jax.grad(lambda h_: jnp.sum(head_logprobs(h_, w, y, with_entropy=True)[1]))(h)
    assert float(jnp.abs(dh).max()) == 0.0
