"""Entry point: ``python train.py [task=sft|reward_model|ppo] [+transform=logsigmoid] [overrides…]``.

Hydra composes ``conf/train.yaml``; ``lit_rlhf.run.pipeline.run`` instantiates and fits. Returns the metric a
Hydra sweeper optimises (``optimized_metric``). A user-input error (bad data line, missing folder, bad
config value) prints ``lit_rlhf: error: …`` and exits 2, as does a command line Hydra cannot compose
(Hydra's message); ``HYDRA_FULL_ERROR=1`` shows the full trace.
"""

import hydra
from omegaconf import DictConfig

from lit_rlhf.run.errors import config_errors_exit_2, exit_on_user_error
from lit_rlhf.run.pipeline import one_ddp_job, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error(), one_ddp_job():  # DDP children re-run this job only, even inside `-m`
        return run(cfg)


if __name__ == "__main__":
    with config_errors_exit_2():
        main()
