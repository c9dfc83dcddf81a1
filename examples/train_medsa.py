#!/usr/bin/env python
"""Train a Med-SA adapter on a medical segmentation task with the Hugging Face Trainer.

Single process:
    python examples/train_medsa.py --model_name_or_path facebook/sam-vit-base --task busi \
        --output_dir runs/busi --max_steps 2000 --per_device_train_batch_size 2 --learning_rate 1e-4 \
        --eval_strategy steps --eval_steps 200 --save_strategy steps --save_steps 200 --load_best_model_at_end
Several GPUs (or processes) through accelerate, e.g. with a config of examples/accelerate/:
    accelerate launch --config_file examples/accelerate/multi_gpu.yaml examples/train_medsa.py ...
SAM 2 and the SAM 3 tracker train the same way: --model_name_or_path facebook/sam2.1-hiera-tiny (volumes as slices).
A JSON or YAML file with the same keys may replace the flags: python examples/train_medsa.py config.yaml
Rerunning a killed command resumes from the last checkpoint in --output_dir. With --push_to_hub (and
--hub_model_id NAME) the kept adapter, its Med-SA card and the metrics are published once, at the end.
"""

from peft_medsa.training.arguments import parse_arguments
from peft_medsa.training.run import train


def main() -> None:
    train(*parse_arguments())


if __name__ == "__main__":
    main()
