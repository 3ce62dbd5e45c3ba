"""A toy run of `student.trainer.train`, launched by the trainer tests as a subprocess (plain or under torchrun).

The model has a tied embedding/output matrix (like OFA), dropout, and the dataset uses the per-sample `draw` seed, so
the resume test covers weights, optimizer, scheduler, RNG and data order.
"""
from __future__ import annotations

import argparse
import os
import signal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from student.trainer import TrainConfig, train


class Toy(torch.nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 16, dropout: float = 0.1):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.hidden = torch.nn.Linear(dim, dim)
        self.drop = torch.nn.Dropout(dropout)
        self.unused = torch.nn.Linear(2, 2)  # like OFA's image-code norms: no gradient, DDP must tolerate it

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.tanh(self.hidden(self.embed(ids).mean(1))))
        return h @ self.embed.weight.T  # tied output projection


class ToyData:
    """Row r: 4 token ids and a label; the draw adds a seeded random token (data augmentation stand-in)."""

    def __init__(self, n: int = 40):
        g = torch.Generator().manual_seed(123)
        self.ids = torch.randint(0, 11, (n, 4), generator=g)
        self.labels = (self.ids.sum(1) % 11)

    def __len__(self) -> int:
        return len(self.ids)

    def example(self, row: int, draw: int) -> dict:
        extra = torch.randint(0, 11, (1,), generator=torch.Generator().manual_seed(draw))
        return {"ids": torch.cat([self.ids[row], extra]), "label": self.labels[row]}


def collate(items: list[dict]) -> dict:
    return {"ids": torch.stack([i["ids"] for i in items]), "label": torch.stack([i["label"] for i in items])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-at-call", type=int, default=0, help="SIGKILL this process at the N-th loss call")
    ap.add_argument("--num-workers", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = Toy(dropout=args.dropout)
    calls = {"n": 0}

    def loss_fn(m, batch, step):
        calls["n"] += 1
        if args.kill_at_call and calls["n"] == args.kill_at_call:
            kids = [k for task in os.listdir("/proc/self/task")
                    for k in open(f"/proc/self/task/{task}/children").read().split()]
            with open(os.path.join(args.out, "workers.txt"), "w") as fh:  # the DataLoader workers, for the test
                fh.write(" ".join(kids))
            os.kill(os.getpid(), signal.SIGKILL)
        logits = m(batch["ids"])
        return F.cross_entropy(logits, batch["label"]), {"n_samples": torch.tensor(len(batch["label"]))}

    def eval_fn(m, accelerator):
        """Accuracy over all rows, each process scoring rows i % world == rank, gathered as objects."""
        from accelerate.utils import gather_object

        data = ToyData()
        mine = list(range(accelerator.process_index, len(data), accelerator.num_processes))
        with torch.no_grad():
            hits = [(i, int(m(data.ids[i: i + 1]).argmax(-1).item() == int(data.labels[i]))) for i in mine]
        hits = gather_object(hits)
        assert sorted(i for i, _ in hits) == list(range(len(data)))
        return {"accuracy": sum(h for _, h in hits) / len(data)}

    cfg = TrainConfig(output_dir=args.out, max_steps=args.steps, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, lr=1e-2, save_every=args.save_every, resume=args.resume,
                      keep_checkpoints=2, report_to="none", eval_every=10, num_workers=args.num_workers)
    result = train(model, loss_fn, ToyData(), cfg, collate_fn=collate, eval_fn=eval_fn)
    if result.is_main_process:
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
                  os.path.join(args.out, "final.safetensors"))
    if torch.distributed.is_initialized():  # as `narvl-pipe` does: a live Gloo group can abort the exit
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
