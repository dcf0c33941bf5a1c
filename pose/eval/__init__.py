"""Evaluation: decoding to image coordinates, rescoring, OKS NMS, COCO AP, gathering."""
