"""From photos and videos to skeletons: person boxes (a detector, a boxes file, or the whole
image), the trained pose model on their crops, keypoints in image pixels."""

from pose.inference.detector import PersonDetector, detector_names
from pose.inference.predictor import Person, PosePredictor
from pose.inference.run import PredictRequest, predict_files

__all__ = [
    "Person",
    "PersonDetector",
    "PosePredictor",
    "PredictRequest",
    "detector_names",
    "predict_files",
]
