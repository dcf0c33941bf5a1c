"""posescale: distributed training of top-down 2D human pose estimation."""
