"""A conditional VAE that learns a shift family: prior p(z|x), encoder q(z|x, x'), decoder G(x, z).

The decoder ends in a sigmoid and is a small MLP over ``concat(flatten(x), z)``, so that a classifier
composed with ``G(x, .)`` for a fixed image ``x`` stays a small network over the latent ``z`` alone.
Training maximises the conditional ELBO: Bernoulli log-likelihood of the shifted image ``x'`` under
``G(x, z)``, ``z ~ q(z|x, x')``, minus ``KL(q(z|x, x') || p(z|x))``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from veracity.shift.families import get


@dataclass(frozen=True)
class CvaeConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent: int = 8
    prior_hidden: int = 256
    encoder_hidden: int = 256
    decoder_hidden: int = 200

    @property
    def n_pixels(self) -> int:
        c, h, w = self.image_shape
        return c * h * w


class Gaussian(nn.Module):
    """MLP from a flat input to (mu, log sigma^2) of a diagonal Gaussian."""

    def __init__(self, n_in: int, hidden: int, latent: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(h)
        return self.mu(h), self.logvar(h)


class Prior(nn.Module):
    """p(z|x): image (N, C, H, W) -> (mu, logvar), each (N, latent)."""

    def __init__(self, cfg: CvaeConfig):
        super().__init__()
        self.net = Gaussian(cfg.n_pixels, cfg.prior_hidden, cfg.latent)

    def forward(self, x):
        return self.net(torch.flatten(x, 1))


class Encoder(nn.Module):
    """q(z|x, x'): clean and shifted image -> (mu, logvar)."""

    def __init__(self, cfg: CvaeConfig):
        super().__init__()
        self.net = Gaussian(2 * cfg.n_pixels, cfg.encoder_hidden, cfg.latent)

    def forward(self, x, x_shifted):
        return self.net(torch.cat([torch.flatten(x, 1), torch.flatten(x_shifted, 1)], 1))


class Decoder(nn.Module):
    """G(x, z): clean image and latent -> shifted image in (0, 1), shaped like x."""

    def __init__(self, cfg: CvaeConfig):
        super().__init__()
        self.image_shape = tuple(cfg.image_shape)
        self.net = nn.Sequential(
            nn.Linear(cfg.n_pixels + cfg.latent, cfg.decoder_hidden), nn.ReLU(),
            nn.Linear(cfg.decoder_hidden, cfg.n_pixels), nn.Sigmoid(),
        )

    def forward(self, x, z):
        return self.net(torch.cat([torch.flatten(x, 1), z], 1)).reshape(-1, *self.image_shape)


class Cvae(nn.Module):
    def __init__(self, cfg: CvaeConfig):
        super().__init__()
        self.cfg = cfg
        self.prior, self.encoder, self.decoder = Prior(cfg), Encoder(cfg), Decoder(cfg)

    def loss(self, x, x_shifted, beta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per image (summed over pixels and latents), with its two parts."""
        mu_p, lv_p = self.prior(x)
        mu_q, lv_q = self.encoder(x, x_shifted)
        z = mu_q + torch.exp(0.5 * lv_q) * torch.randn_like(mu_q)
        logits = self.decoder.net[:-1](torch.cat([torch.flatten(x, 1), z], 1))
        rec = F.binary_cross_entropy_with_logits(logits, torch.flatten(x_shifted, 1), reduction="sum") / x.shape[0]
        kl = 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1.0).sum(1).mean()
        return rec + beta * kl, {"rec": float(rec.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def reconstruct(self, x, x_shifted):
        """G(x, mean of q(z|x, x')): how well the latent captures the shift."""
        mu_q, _ = self.encoder(x, x_shifted)
        return self.decoder(x, mu_q)

    @torch.no_grad()
    def sample(self, x, generator: torch.Generator | None = None, scale: float = 1.0):
        """G(x, z) with z drawn from p(z|x) (standard deviations times ``scale``)."""
        mu, lv = self.prior(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        return self.decoder(x, mu + scale * torch.exp(0.5 * lv) * eps)


def pairs(x: torch.Tensor, shift: str, generator: torch.Generator | None = None):
    """(x, shift(x, theta), theta) with theta uniform in the family's range."""
    fam = get(shift)
    theta = fam.sample(x.shape[0], generator, x.dtype)
    return x, fam(x, theta), theta


def train(model: Cvae, images: np.ndarray, shift: str, *, epochs: int = 3, batch: int = 128, lr: float = 1e-3,
          beta: float = 1.0, seed: int = 0, max_steps: int | None = None, progress=None) -> list[float]:
    """Adam on the negative ELBO over (x, shift(x, theta)) pairs drawn afresh every batch; returns the losses.

    ``progress(step, total, loss)`` is called after each step when given.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = (len(data) + batch - 1) // batch
    total = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)
    losses: list[float] = []
    model.train()
    step = 0
    while step < total:
        order = torch.randperm(len(data), generator=gen)
        for i in range(per_epoch):
            if step >= total:
                break
            x = data[order[i * batch:(i + 1) * batch]]
            _, xs, _ = pairs(x, shift, gen)
            loss, _ = model.loss(x, xs, beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if progress is not None:
                progress(step, total, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: Cvae, images: np.ndarray, shift: str, seed: int = 1) -> dict[str, float]:
    """Mean absolute pixel errors against fresh shifted images x' on ``images``.

    ``reconstruction``: G(x, mean of q(z|x, x')); ``prior_mean``: G(x, mean of p(z|x)) (what the prior
    alone predicts, blind to theta); ``identity``: x itself (the error of ignoring the shift).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    _, xs, _ = pairs(x, shift, gen)
    rec = model.reconstruct(x, xs)
    mu_p, _ = model.prior(x)
    pm = model.decoder(x, mu_p)
    return {
        "reconstruction": float((rec - xs).abs().mean()),
        "prior_mean": float((pm - xs).abs().mean()),
        "identity": float((x - xs).abs().mean()),
    }


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names) -> None:
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated, but it gives plain Gemm/Relu/Sigmoid graphs
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          opset_version=13, do_constant_folding=True, dynamo=False)


def export_onnx(model: Cvae, generator_path: Path, prior_path: Path) -> None:
    """G as ONNX with inputs (x: (1, C, H, W), z: (1, latent)) -> image; the prior as x -> (mu, logvar)."""
    cfg = model.cfg
    x = torch.zeros(1, *cfg.image_shape)
    z = torch.zeros(1, cfg.latent)
    model.eval()
    _export(model.decoder, (x, z), generator_path, ["x", "z"], ["image"])
    _export(model.prior, (x,), prior_path, ["x"], ["mu", "logvar"])


def save_grid(model: Cvae, images: np.ndarray, shift: str, path: Path, n_rows: int = 6, n_real: int = 4,
              n_fake: int = 4, seed: int = 2) -> None:
    """PNG grid: per row a clean image, real shifts at evenly spaced theta, then G(x, z) for z ~ p(z|x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fam = get(shift)
    x = torch.from_numpy(np.ascontiguousarray(images[:n_rows], dtype=np.float32))
    thetas = np.linspace(fam.low, fam.high, n_real)
    gen = torch.Generator().manual_seed(seed)
    cols = [("clean x", x)]
    cols += [(f"θ={t:.2g}", fam(x, float(t))) for t in thetas]
    cols += [("G(x,z)", model.sample(x, gen)) for _ in range(n_fake)]
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(1.1 * len(cols), 1.15 * n_rows + 0.5), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        for i in range(n_rows):
            ax = axes[i, j]
            ax.imshow(imgs[i].detach().numpy().transpose(1, 2, 0).squeeze(-1) if imgs.shape[1] == 1
                      else imgs[i].detach().numpy().transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"{shift}: clean x | real shift(x, θ) at {n_real} values of θ | G(x, z) for {n_fake} draws z ~ p(z|x)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_meta(path: Path, cfg: CvaeConfig, **extra) -> None:
    import json

    meta = {"config": asdict(cfg), "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    path.write_text(json.dumps(meta, indent=2) + "\n")
