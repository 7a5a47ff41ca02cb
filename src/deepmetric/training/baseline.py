"""The baseline of every run: the model as built, scored before the first training step."""

from __future__ import annotations

from .. import distributed
from .checkpoint import rng_state, set_rng_state


def score_baseline(trainer) -> dict:
    """Metrics of the untrained model (pretrained trunk, fresh heads) on validation and test, and, for a pretrained
    trunk, of its pooled features without the heads (``trunk``). Logged as step-0 evaluations (``baseline: true``).
    The RNG state is left as it was, so a run trains exactly the same with or without the baseline."""
    cfg = trainer.cfg
    pretrained = bool(cfg.model.pretrained or cfg.model.weights)
    out: dict = {}
    saved = rng_state()
    for split in ("val", "test"):
        if split == "val" and trainer.data.val_set is None:
            continue
        emb = trainer.embed(split, progress=True, trunk=pretrained)
        out[split] = distributed.broadcast_object(trainer.score(split, emb) if trainer.main else None)
        if pretrained:
            trunk = trainer.score(split, emb.with_embeddings(emb.trunk)) if trainer.main else None
            out.setdefault("trunk", {})[split] = distributed.broadcast_object(trunk)
    set_rng_state(saved)
    for split in ("val", "test"):
        if split in out:
            trainer.log.write({"type": "eval", "split": split, "step": 0, "epoch": 0, "baseline": True, **out[split]})
    key = cfg.train.select_metric
    shown = [f"{s} {key} {m.get(key, float('nan')):.4f}" for s, m in out.items() if s != "trunk"]
    shown += [f"trunk features {s} {m.get(key, float('nan')):.4f}" for s, m in out.get("trunk", {}).items()]
    trainer.log.say("baseline (before training): " + ", ".join(shown))
    return out
