"""What stops a training run, by kind; `launch/train.py` maps each to an exit code."""


class TrainingError(RuntimeError):
    """The run failed while training (a non-finite loss, too many samples that do not decode,
    a checkpoint that could not be written); the message names the step or the file."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found or restored; the message names the folder."""
