"""Run by the tests under torchrun: train a small configuration (JSON in argv[1]) as
`splat-train` would, and record what each rank saw (argv[2]/rank<r>.json): the Gaussian
count of the model the viewer would show after every step, the shard sizes, the metrics."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from splat.distributed.world import World  # noqa: E402
from splat.train.callbacks import Callback  # noqa: E402
from splat.train.config import config_from_json  # noqa: E402
from splat.train.loop import Trainer  # noqa: E402


class Record(Callback):
    def __init__(self):
        self.shown = []

    def on_step(self, trainer, step, stats):
        self.shown.append([step, trainer.display_model.num_gaussians, trainer.num_gaussians])


def main():
    cfg = config_from_json(json.loads(sys.argv[1]))
    out = Path(sys.argv[2])
    world = World.from_env(cfg.dist, cfg.device, str(cfg.out))
    rec = Record()
    t = Trainer(cfg, log=lambda *a: None, callbacks=[rec], world=world)
    m = t.train()
    t.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{world.rank}.json").write_text(json.dumps({
        "shown": rec.shown, "sizes": t.sharded.sizes if t.sharded else None, "psnr": m["psnr"],
        "num_gaussians": m["num_gaussians"], "distributed": m.get("distributed")}))
    world.close()


if __name__ == "__main__":
    main()
