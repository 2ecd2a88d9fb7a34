"""Evaluate a checkpoint of ours or published weights; prints top-1/top-5 as the model card does.

python eval.py ckpt_path=outputs/DATE/TIME/checkpoints/best.ckpt            # on the data it trained on
python eval.py model=vit_base_p16 model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth data=imagenet
"""

from vit_exp.cli import evaluate

if __name__ == "__main__":
    evaluate()
