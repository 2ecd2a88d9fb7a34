"""Train or fine-tune a ViT (Hydra; configs in conf/, the run logic in vit_exp.run).

python train.py                                       # a small ViT on the embedded digits, CPU, ~35 s
python train.py model=vit_base patch=32 res=384 data=imagenet hw=gpu
python train.py experiment=vit_b16_imagenet_finetune model.pretrained=PATH
python train.py ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt   # resume
python train.py --cfg job                             # print the composed config, run nothing
"""

from vit_exp.cli import train

if __name__ == "__main__":
    train()
