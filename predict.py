"""Print the top-5 classes of images with a checkpoint of ours or published weights (vit_exp.predict).

python predict.py ckpt_path=outputs/DATE/TIME/checkpoints/best.ckpt images=photos/      # a folder (recursive)
python predict.py ckpt_path=... images=[cat.jpg,dog.png] topk=3
python predict.py model=vit_base_p16 model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth images=cat.jpg
"""

from vit_exp.cli import predict

if __name__ == "__main__":
    predict()
