"""Evaluation: decoding to image coordinates, rescoring, OKS NMS, COCO AP, gathering, and
evaluating a checkpoint as the eval program does."""
